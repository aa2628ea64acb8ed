//! Bodies as they stream through: counted on the way, never buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

use super::exchange::{Direction, Exchange};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body regproxy sends, either way.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn text(message: String) -> ProxyBody {
    Full::new(Bytes::from(message))
        .map_err(|never| match never {})
        .boxed()
}

/// A body that counts its bytes into its exchange as they pass. It holds
/// no data itself: each frame goes on as soon as it is polled, which is
/// what gives end-to-end backpressure.
pub struct Metered<B> {
    inner: B,
    exchange: Arc<Exchange>,
    direction: Direction,
}

impl<B> Metered<B> {
    pub fn new(inner: B, exchange: Arc<Exchange>, direction: Direction) -> Self {
        Self {
            inner,
            exchange,
            direction,
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.exchange.passed(self.direction, data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                let side = match self.direction {
                    Direction::Up => "client body",
                    Direction::Down => "registry body",
                };
                self.exchange
                    .fail(format!("{side}: {}", error_chain(&*error)));
                Poll::Ready(Some(Err(error)))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An error and its causes on one line, `outer: cause: root cause`,
/// skipping a cause whose text the outer message already contains.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
