//! OCI image layouts made for a test: gzip layers of random bytes (so
//! nothing deduplicates or compresses them away), a config and a manifest.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A blob as a manifest references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: String,
    pub size: u64,
}

pub struct OciImage {
    dir: tempfile::TempDir,
    pub layers: Vec<Descriptor>,
    pub config: Descriptor,
    pub manifest: Descriptor,
}

impl OciImage {
    /// An image with one layer per size (bytes of random file content),
    /// tagged `1`. `seed` makes two images differ.
    pub fn generate(seed: u64, layer_sizes: &[usize]) -> OciImage {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("image");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let mut random = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let layers: Vec<Descriptor> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, size)| write_blob(&layout, &layer(&mut random, i, *size)))
            .collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", l.digest)).collect();
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\
             \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
            diff_ids.join(",")
        );
        let config = write_blob(&layout, config.as_bytes());
        let manifest = write_blob(&layout, manifest_json(&config, &layers).as_bytes());
        let index = format!(
            "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"{MANIFEST_TYPE}\",\
             \"digest\":\"{}\",\"size\":{},\
             \"annotations\":{{\"org.opencontainers.image.ref.name\":\"1\"}}}}]}}",
            manifest.digest, manifest.size
        );
        fs::write(layout.join("index.json"), index).unwrap();
        fs::write(
            layout.join("oci-layout"),
            "{\"imageLayoutVersion\":\"1.0.0\"}",
        )
        .unwrap();
        OciImage {
            dir,
            layers,
            config,
            manifest,
        }
    }

    pub fn layout(&self) -> PathBuf {
        self.dir.path().join("image")
    }

    /// `oci:<layout>:1`, for skopeo.
    pub fn reference(&self) -> String {
        format!("oci:{}:1", self.layout().display())
    }

    /// Every blob the registry must hold for this image.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut blobs = self.layers.clone();
        blobs.push(self.config.clone());
        blobs
    }

    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Reads an OCI layout back: the manifest of its only image, with every
/// blob's bytes checked against its digest.
pub fn read_layout(layout: &Path) -> (Descriptor, Vec<Descriptor>) {
    let index = fs::read_to_string(layout.join("index.json")).unwrap();
    let manifest_digest = json_string_after(&index, "\"digest\"");
    let manifest_bytes = read_verified(layout, &manifest_digest);
    let manifest_text = String::from_utf8(manifest_bytes.clone()).unwrap();
    let layers_part = &manifest_text[manifest_text.find("\"layers\"").unwrap()..];
    let layers: Vec<Descriptor> = layers_part
        .split("\"digest\"")
        .skip(1)
        .map(|part| {
            let digest = json_string_after(part, "");
            let size = read_verified(layout, &digest).len() as u64;
            Descriptor { digest, size }
        })
        .collect();
    let manifest = Descriptor {
        digest: manifest_digest,
        size: manifest_bytes.len() as u64,
    };
    (manifest, layers)
}

fn read_verified(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        sha256(&bytes),
        digest,
        "blob content does not match its digest"
    );
    bytes
}

/// The first JSON string value after `key` in `text`. Enough for the
/// fixed shapes written here and by skopeo, without a JSON dependency.
fn json_string_after(text: &str, key: &str) -> String {
    let after = &text[text.find(key).unwrap() + key.len()..];
    let start = after.find('"').unwrap() + 1;
    let end = start + after[start..].find('"').unwrap();
    after[start..end].to_owned()
}

fn manifest_json(config: &Descriptor, layers: &[Descriptor]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                "{{\"mediaType\":\"{LAYER_TYPE}\",\"digest\":\"{}\",\"size\":{}}}",
                l.digest, l.size
            )
        })
        .collect();
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_TYPE}\",\
         \"config\":{{\"mediaType\":\"{CONFIG_TYPE}\",\"digest\":\"{}\",\"size\":{}}},\
         \"layers\":[{}]}}",
        config.digest,
        config.size,
        layers.join(",")
    )
}

/// A gzip'd tar holding one file of `size` random bytes. Stored, not
/// compressed: the bytes are random anyway, and this keeps tests fast.
fn layer(random: &mut XorShift, index: usize, size: usize) -> Vec<u8> {
    let mut content = vec![0u8; size];
    random.fill(&mut content);
    let gzip = GzEncoder::new(Vec::new(), Compression::none());
    let mut tar = tar::Builder::new(gzip);
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(
        &mut header,
        format!("layer-{index}.bin"),
        content.as_slice(),
    )
    .unwrap();
    let mut gzip = tar.into_inner().unwrap();
    gzip.flush().unwrap();
    gzip.finish().unwrap()
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Descriptor {
    let digest = sha256(bytes);
    let path = layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    fs::write(path, bytes).unwrap();
    Descriptor {
        digest,
        size: bytes.len() as u64,
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    sha256(&fs::read(path).unwrap())
}

/// A small fast PRNG: test data needs to be incompressible, not secret.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}
