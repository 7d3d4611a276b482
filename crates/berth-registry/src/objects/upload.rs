//! Upload sessions in the bucket, so a chunked push can go on at any replica.
//!
//! A session is one JSON object, `uploads/<id>/state`, rewritten (conditionally on its
//! ETag) after every request that adds bytes. The bytes go into an S3 multipart upload
//! to `uploads/<id>/data` in parts of [`part_size`] bytes (S3 wants at least 5 MiB for all
//! but the last, at most 5 GiB, and at most 10,000 parts); what is left over after a
//! request, less than a part, is kept as its own
//! small object `uploads/<id>/tail-<uuid>` that the state names, and the next request
//! starts its first part with it. The state also holds the running SHA-256 (its
//! serialized internal state), so each byte is hashed once, wherever it arrived.
//!
//! A request that dies mid-body leaves the state as it was: the client resumes from the
//! offset the upload reports, and parts it sent again replace the ones uploaded for
//! nothing (same part numbers). The closing PUT completes the multipart upload, checks
//! the digest and copies the object to `blobs/<alg>/<hex>` (server-side: CopyObject up
//! to 5 GiB, UploadPartCopy beyond, see [`ObjectStorage::copy_object`]).

use berth_oci::{Algorithm, Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState;

use super::{ObjectStorage, RECEIVING, failure};
use crate::error::{Code, RegistryError};

/// Size of the first parts of an upload (see [`part_size`]), and the unit in which
/// receiving requests take memory.
pub(crate) const PART: usize = 8 << 20;

/// Parts of one size before the size doubles.
const PARTS_PER_SIZE: usize = 1000;

/// S3's limit on the parts of one multipart upload.
pub(crate) const MAX_PARTS: usize = 10_000;

/// The size of part `index` (from 0): 8 MiB for the first 1000 parts (7.8 GiB), then
/// twice as much every 1000 parts. An upload's length is not known when it starts (a
/// chunked push announces none), so the size follows the parts already sent: small
/// blobs keep small parts (memory per request is one part), and 10,000 parts hold
/// 8000 MiB × 1023 ≈ 7.8 TiB, above S3's 5 TiB object limit, with the largest part
/// (4 GiB) under S3's 5 GiB part limit. S3 allows parts of different sizes (R2, which
/// wants equal ones, is not served by this).
pub(crate) fn part_size(index: usize) -> usize {
    PART << (index / PARTS_PER_SIZE).min(9)
}

/// The persisted session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The repository the upload was started in.
    repo: String,
    /// The S3 multipart upload, once the first part was sent.
    multipart: Option<String>,
    /// ETags of the parts, in order.
    parts: Vec<String>,
    /// Bytes in `parts`.
    part_bytes: u64,
    /// The tail object's name under `uploads/<id>/`, if any.
    tail: Option<String>,
    /// Bytes in the tail.
    tail_len: u64,
    /// The SHA-256 of every byte so far, serialized (hex).
    hash: String,
}

/// An upload session loaded for one request.
pub(crate) struct Session {
    id: String,
    state: State,
    /// The state object's version, for the conditional rewrite; `None` for a session
    /// never saved (single-request uploads).
    version: Option<UpdateVersion>,
    hasher: sha2::Sha256,
    /// Bytes after the last part (the tail, then what this request added).
    buf: BytesMut,
    /// The share of the replica's receive budget this request holds (units of [`PART`]),
    /// while it reads a body: see [`ObjectStorage::reserve`].
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn serialize(h: &sha2::Sha256) -> String {
    hex(h.serialize().as_slice())
}

fn deserialize(s: &str) -> Option<sha2::Sha256> {
    let bytes = unhex(s)?;
    let arr = bytes.as_slice().try_into().ok()?;
    sha2::Sha256::deserialize(arr).ok()
}

impl ObjectStorage {
    fn upload_key(&self, id: &str, rest: &str) -> Path {
        self.key(&format!("uploads/{id}/{rest}"))
    }

    /// A new session for `repo`; saved unless `ephemeral` (a single-POST upload).
    pub(crate) async fn start_upload(
        &self,
        repo: &str,
        ephemeral: bool,
    ) -> Result<Session, RegistryError> {
        let hasher = sha2::Sha256::default();
        let mut s = Session {
            id: uuid::Uuid::new_v4().to_string(),
            state: State {
                repo: repo.to_string(),
                multipart: None,
                parts: Vec::new(),
                part_bytes: 0,
                tail: None,
                tail_len: 0,
                hash: serialize(&hasher),
            },
            version: None,
            hasher,
            buf: BytesMut::new(),
            slot: None,
        };
        if !ephemeral {
            self.save(&mut s).await?;
        }
        Ok(s)
    }

    /// Load session `id` of `repo`; `None` if there is none (or it is another
    /// repository's).
    pub(crate) async fn open_upload(
        &self,
        repo: &str,
        id: &str,
    ) -> Result<Option<Session>, RegistryError> {
        let key = self.upload_key(id, "state");
        let r = match self.inner.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(failure(e)),
        };
        let version = UpdateVersion {
            e_tag: r.meta.e_tag.clone(),
            version: r.meta.version.clone(),
        };
        let bytes = r.bytes().await.map_err(failure)?;
        let corrupt = |why: &str| {
            super::failure_msg(format!(
                "upload {id}: its state object {key} is {why}; cancel the upload and push again"
            ))
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|_| corrupt("not JSON"))?;
        if state.repo != repo {
            return Ok(None);
        }
        let hasher = deserialize(&state.hash).ok_or_else(|| corrupt("missing its hash"))?;
        let mut buf = BytesMut::new();
        if let Some(tail) = &state.tail {
            let data = self
                .inner
                .get_range(&self.upload_key(id, tail), 0..state.tail_len)
                .await
                .map_err(failure)?;
            if data.len() as u64 != state.tail_len {
                return Err(corrupt("naming a tail shorter than recorded"));
            }
            buf.extend_from_slice(&data);
        }
        Ok(Some(Session {
            id: id.to_string(),
            state,
            version: Some(version),
            hasher,
            buf,
            slot: None,
        }))
    }

    /// The multipart upload of session `id`, if it has one (for gc).
    pub(crate) async fn upload_multipart(&self, id: &str) -> Result<Option<String>, RegistryError> {
        let Some(b) = self.read(&self.upload_key(id, "state")).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<State>(&b)
            .ok()
            .and_then(|s| s.multipart))
    }

    /// Send full parts out of the session's buffer.
    async fn flush_parts(&self, s: &mut Session, all: bool) -> Result<(), RegistryError> {
        let data_key = self.upload_key(&s.id, "data");
        loop {
            let size = part_size(s.state.parts.len());
            let full = s.buf.len() >= size;
            let last = all && !s.buf.is_empty();
            if !full && !last {
                break;
            }
            if s.state.parts.len() >= MAX_PARTS {
                return Err(RegistryError::new(
                    Code::SizeInvalid,
                    format!(
                        "upload {} is larger than object storage takes ({MAX_PARTS} parts, {} bytes)",
                        s.id,
                        s.state.part_bytes
                    ),
                )
                .with_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE));
            }
            let n = s.buf.len().min(size);
            let part = s.buf.split_to(n).freeze();
            let mp = match &s.state.multipart {
                Some(m) => m.clone(),
                None => {
                    let m = self
                        .inner
                        .create_multipart(&data_key)
                        .await
                        .map_err(failure)?;
                    s.state.multipart = Some(m.clone());
                    m
                }
            };
            let PartId { content_id } = self
                .inner
                .put_part(
                    &data_key,
                    &mp,
                    s.state.parts.len(),
                    PutPayload::from_bytes(part),
                )
                .await
                .map_err(failure)?;
            s.state.parts.push(content_id);
            s.state.part_bytes += n as u64;
            if s.slot.is_some() {
                self.reserve(s).await?;
            }
        }
        Ok(())
    }

    /// Hold as much of the receive budget as session `s`'s next part needs (the budget
    /// counts [`PART`]s; a part bigger than all of it takes all of it). A request that
    /// needs more gives back what it holds and waits for the larger share, so two
    /// growing requests cannot each hold half and wait for the other.
    pub(crate) async fn reserve(&self, s: &mut Session) -> Result<(), RegistryError> {
        let want = (part_size(s.state.parts.len()) / PART).min(RECEIVING) as u32;
        if s.slot
            .as_ref()
            .is_some_and(|p| p.num_permits() as u32 >= want)
        {
            return Ok(());
        }
        s.slot = None;
        let permit = self
            .receiving
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| {
                RegistryError::new(Code::Unavailable, "the registry is shutting down")
                    .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
            })?;
        s.slot = Some(permit);
        Ok(())
    }

    /// Add `chunk` to the session (hashing it, sending full parts).
    pub(crate) async fn append(&self, s: &mut Session, chunk: &Bytes) -> Result<(), RegistryError> {
        sha2::Digest::update(&mut s.hasher, chunk);
        s.buf.extend_from_slice(chunk);
        if s.buf.len() >= part_size(s.state.parts.len()) {
            self.flush_parts(s, false).await?;
        }
        Ok(())
    }

    /// Persist the session: its tail as a new object, then its state (conditionally on
    /// the version loaded, so two replicas writing one upload at once cannot both win).
    pub(crate) async fn save(&self, s: &mut Session) -> Result<(), RegistryError> {
        let old_tail = s.state.tail.take();
        if s.buf.is_empty() {
            s.state.tail_len = 0;
        } else {
            let name = format!("tail-{}", uuid::Uuid::new_v4());
            self.inner
                .put(
                    &self.upload_key(&s.id, &name),
                    PutPayload::from_bytes(Bytes::copy_from_slice(&s.buf)),
                )
                .await
                .map_err(failure)?;
            s.state.tail = Some(name);
            s.state.tail_len = s.buf.len() as u64;
        }
        s.state.hash = serialize(&s.hasher);
        let json = serde_json::to_vec(&s.state).expect("state json");
        let mode = match &s.version {
            Some(v) => PutMode::Update(v.clone()),
            None => PutMode::Create,
        };
        let put = self
            .inner
            .put_opts(
                &self.upload_key(&s.id, "state"),
                PutPayload::from(json),
                PutOptions::from(mode),
            )
            .await;
        let r = match put {
            Ok(r) => r,
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => {
                return Err(RegistryError::new(
                    Code::BlobUploadInvalid,
                    format!(
                        "upload {} was changed by another request while this one ran; GET its status and resume from the offset it reports",
                        s.id
                    ),
                )
                .with_status(axum::http::StatusCode::CONFLICT));
            }
            Err(e) => return Err(failure(e)),
        };
        s.version = Some(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        });
        if let Some(old) = old_tail
            && Some(&old) != s.state.tail.as_ref()
        {
            let _ = self.inner.delete(&self.upload_key(&s.id, &old)).await;
        }
        Ok(())
    }

    /// Finish the session as blob `expected`: complete the multipart upload, check the
    /// digest, move the object to `blobs/`, and remove the session. A digest that does
    /// not match removes the session too: its data can never become that blob.
    pub(crate) async fn commit_upload(
        &self,
        mut s: Session,
        expected: &Digest,
    ) -> Result<(), RegistryError> {
        let digest = match expected.algorithm() {
            Algorithm::Sha256 => Hasher::Sha256(s.hasher.clone()).finish(),
            _ => Digest::sha256(b""), // re-hashed below, once the object is whole
        };
        let blob_key = self.blob_key(expected);
        let size = s.received();
        let result = async {
            if s.state.multipart.is_none() {
                // Small: the whole blob is in the buffer.
                let data = s.buf.clone().freeze();
                let actual = match expected.algorithm() {
                    Algorithm::Sha256 => digest.clone(),
                    alg => Digest::of(alg, &data),
                };
                check_digest(expected, &actual, size)?;
                return self.write(&blob_key, data).await;
            }
            self.flush_parts(&mut s, true).await?;
            let data_key = self.upload_key(&s.id, "data");
            let mp = s.state.multipart.clone().expect("multipart");
            let parts = s
                .state
                .parts
                .iter()
                .map(|c| PartId {
                    content_id: c.clone(),
                })
                .collect();
            self.inner
                .complete_multipart(&data_key, &mp, parts)
                .await
                .map_err(failure)?;
            s.state.multipart = None;
            let actual = match expected.algorithm() {
                Algorithm::Sha256 => digest.clone(),
                alg => {
                    let mut h = alg.hasher();
                    let mut stream = self
                        .inner
                        .get(&data_key)
                        .await
                        .map_err(failure)?
                        .into_stream();
                    while let Some(c) = stream.next().await {
                        h.update(&c.map_err(failure)?);
                    }
                    h.finish()
                }
            };
            check_digest(expected, &actual, size)?;
            self.copy_object(&data_key, &blob_key, size).await
        }
        .await;
        self.discard(&s.id, s.state.multipart.as_deref()).await;
        result
    }

    /// Remove a session and everything it uploaded (best effort: a leftover multipart
    /// upload is for the bucket's lifecycle rule).
    pub(crate) async fn discard(&self, id: &str, multipart: Option<&str>) {
        if let Some(mp) = multipart {
            let _ = self
                .inner
                .abort_multipart(&self.upload_key(id, "data"), &mp.to_string())
                .await;
        }
        if let Err(e) = self.remove_all(&format!("uploads/{id}")).await {
            tracing::warn!(upload = id, error = %e.message, "could not remove an upload's objects");
        }
    }

    /// Cancel session `s`.
    pub(crate) async fn cancel(&self, s: Session) {
        self.discard(&s.id, s.state.multipart.as_deref()).await;
    }
}

impl Session {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Bytes received so far, this request's included.
    pub(crate) fn received(&self) -> u64 {
        self.state.part_bytes + self.buf.len() as u64
    }

    /// Give back the receive budget (the body is read).
    pub(crate) fn release(&mut self) {
        self.slot = None;
    }
}

fn check_digest(expected: &Digest, actual: &Digest, size: u64) -> Result<(), RegistryError> {
    if expected == actual {
        return Ok(());
    }
    Err(RegistryError::new(
        Code::DigestInvalid,
        format!("upload of {size} bytes has digest {actual}, not {expected}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts S3 takes (5 MiB to 5 GiB), and 10,000 of them hold S3's largest object.
    #[test]
    fn part_sizes_cover_s3s_largest_object_in_10000_parts() {
        let mut total = 0u64;
        for i in 0..MAX_PARTS {
            let n = part_size(i) as u64;
            assert!((5 << 20..=5 << 30).contains(&n), "part {i}: {n}");
            assert!(i == 0 || n >= part_size(i - 1) as u64, "part {i} shrinks");
            total += n;
        }
        assert!(total >= 5 << 40, "10,000 parts hold {total} bytes");
        assert_eq!(part_size(0), 8 << 20);
        assert_eq!(part_size(999), 8 << 20);
        assert_eq!(part_size(1000), 16 << 20);
        assert_eq!(part_size(MAX_PARTS - 1), 4 << 30);
        // A 5 GiB blob, the limit of one PUT or copy, is still in 8 MiB parts: 640.
        assert!(((5u64 << 30) / (8 << 20)) < PARTS_PER_SIZE as u64);
    }

    /// A request holds the receive budget its part size needs: one unit up to 1000
    /// parts, two after, all of it (not more) for parts larger than the budget; taking
    /// more gives back what it held first; the body read, it holds nothing.
    #[tokio::test]
    async fn requests_hold_the_budget_their_part_size_needs() {
        let settings = super::super::S3Settings {
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let env = |k: &str| k.starts_with("AWS_").then(|| "test".to_string());
        let os = ObjectStorage::with_env(&settings, &Default::default(), &env).unwrap();
        let mut s = os.start_upload("r", true).await.unwrap();
        let free = || os.receiving.available_permits();
        assert_eq!(free(), RECEIVING);
        os.reserve(&mut s).await.unwrap();
        assert_eq!(free(), RECEIVING - 1);
        s.state.parts = vec![String::new(); 1000];
        os.reserve(&mut s).await.unwrap();
        assert_eq!(free(), RECEIVING - 2);
        // Fewer parts than what it holds: it keeps what it has.
        s.state.parts.truncate(10);
        os.reserve(&mut s).await.unwrap();
        assert_eq!(free(), RECEIVING - 2);
        s.state.parts = vec![String::new(); MAX_PARTS - 1];
        os.reserve(&mut s).await.unwrap();
        assert_eq!(free(), 0);
        s.release();
        assert_eq!(free(), RECEIVING);
    }
}
