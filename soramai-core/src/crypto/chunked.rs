//! Cobblestone-256: the C2SP chunked-encryption scheme (<https://c2sp.org/chunked-encryption>)
//! instantiated with HKDF-Expand-SHA-512 and AES-256-GCM.
//!
//! A message is split into 16 KiB chunks (the last one always shorter, possibly empty), each sealed
//! with AES-256-GCM under a per-message key and the per-message base nonce XOR'd with the chunk
//! number. The ciphertext is `salt (24) || commitment (32) || chunks`. The 32-byte key commitment is
//! checked before any chunk is decrypted, so a wrong key or a wrong context fails up front.
//!
//! Three ways to decrypt, all authenticated:
//! - [`decrypt`]: a whole message in memory;
//! - [`StreamDecryptor`]: a `Read` adapter that yields plaintext one authenticated chunk at a time;
//! - [`RandomAccess`]: reads any plaintext range, decrypting only the chunks it touches, after
//!   authenticating the message length through the final chunk.
//!
//! Every failure is reported as the opaque [`CryptoError`].

use std::fmt;
use std::io::{self, Read, Write};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 16 * 1024;
/// AES-GCM tag length.
pub const TAG_SIZE: usize = 16;
/// Length of the random salt at the start of every ciphertext.
pub const SALT_SIZE: usize = 24;
/// Length of the key commitment that follows the salt.
pub const COMMITMENT_SIZE: usize = 32;
/// `salt || commitment`.
pub const HEADER_SIZE: usize = SALT_SIZE + COMMITMENT_SIZE;
/// Input key length (AES-256).
pub const KEY_SIZE: usize = 32;
/// AES-GCM nonce length.
pub const NONCE_SIZE: usize = 12;
/// Bytes of one full encrypted chunk.
pub const SEALED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;
/// The scheme aborts at 2^38 chunks (4 PiB).
const MAX_CHUNKS: u64 = 1 << 38;
const LABEL: &[u8] = b"c2sp.org/chunked-encryption@v1+";
const AEAD_NAME: &[u8] = b"AEAD_AES_256_GCM";

pub use super::opaque::CryptoError;

/// HKDF-Expand (RFC 5869 section 2.3) with HMAC-SHA-512, for a PRK of any length.
///
/// The `hkdf` crate insists on a PRK of at least the hash length (64 bytes), while this scheme
/// expands straight from a 32-byte input key, so the expand loop is spelled out over `hmac`.
pub fn hkdf_expand_sha512(prk: &[u8], info: &[&[u8]], okm: &mut [u8]) -> Result<(), CryptoError> {
    const HASH_LEN: usize = 64;
    if okm.len() > 255 * HASH_LEN {
        return Err(CryptoError);
    }
    let mut previous = Zeroizing::new([0u8; HASH_LEN]);
    let mut have_previous = false;
    for (i, block) in okm.chunks_mut(HASH_LEN).enumerate() {
        let mut mac = <Hmac<Sha512> as hmac::KeyInit>::new_from_slice(prk).map_err(|_| CryptoError)?;
        if have_previous {
            mac.update(&previous[..]);
        }
        for part in info {
            mac.update(part);
        }
        // `i < 255` is guaranteed by the length check above.
        mac.update(&[(i + 1) as u8]);
        let t = mac.finalize().into_bytes();
        previous.copy_from_slice(&t);
        block.copy_from_slice(&previous[..block.len()]);
        have_previous = true;
    }
    Ok(())
}

/// Per-message AEAD state derived from the input key, the salt and the context.
struct MessageCipher {
    aead: Aes256Gcm,
    base_nonce: [u8; NONCE_SIZE],
}

impl MessageCipher {
    /// Derives key, base nonce and commitment; returns the cipher and the commitment.
    fn derive(
        input_key: &[u8],
        salt: &[u8; SALT_SIZE],
        context: &[u8],
    ) -> Result<(Self, [u8; COMMITMENT_SIZE]), CryptoError> {
        if input_key.len() != KEY_SIZE {
            return Err(CryptoError);
        }
        let mut okm = Zeroizing::new([0u8; KEY_SIZE + NONCE_SIZE + COMMITMENT_SIZE]);
        hkdf_expand_sha512(input_key, &[LABEL, AEAD_NAME, &[0u8], salt, context], &mut okm[..])?;
        let aead = Aes256Gcm::new_from_slice(&okm[..KEY_SIZE]).map_err(|_| CryptoError)?;
        let mut base_nonce = [0u8; NONCE_SIZE];
        base_nonce.copy_from_slice(&okm[KEY_SIZE..KEY_SIZE + NONCE_SIZE]);
        let mut commitment = [0u8; COMMITMENT_SIZE];
        commitment.copy_from_slice(&okm[KEY_SIZE + NONCE_SIZE..]);
        Ok((Self { aead, base_nonce }, commitment))
    }

    fn nonce(&self, index: u64) -> Result<Nonce<aes_gcm::aead::consts::U12>, CryptoError> {
        if index >= MAX_CHUNKS {
            return Err(CryptoError);
        }
        let mut nonce = self.base_nonce;
        for (n, c) in nonce[4..].iter_mut().zip(index.to_be_bytes()) {
            *n ^= c;
        }
        Ok(Nonce::from(nonce))
    }

    /// Seals `chunk` in place and appends the tag.
    fn seal(&self, index: u64, chunk: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce = self.nonce(index)?;
        let tag =
            self.aead.encrypt_inout_detached(&nonce, &[], chunk.as_mut_slice().into()).map_err(|_| CryptoError)?;
        chunk.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens one sealed chunk in place, enforcing the chunking rule: a non-final chunk holds exactly
    /// [`CHUNK_SIZE`] bytes of plaintext, the final one strictly fewer.
    fn open(&self, index: u64, sealed: &mut Vec<u8>, is_final: bool) -> Result<(), CryptoError> {
        let body_len = sealed.len().checked_sub(TAG_SIZE).ok_or(CryptoError)?;
        let size_ok = if is_final { body_len < CHUNK_SIZE } else { body_len == CHUNK_SIZE };
        if !size_ok {
            return Err(CryptoError);
        }
        let nonce = self.nonce(index)?;
        let tag = Tag::from(<[u8; TAG_SIZE]>::try_from(&sealed[body_len..]).map_err(|_| CryptoError)?);
        let result = self.aead.decrypt_inout_detached(&nonce, &[], (&mut sealed[..body_len]).into(), &tag);
        if result.is_err() {
            sealed.zeroize();
            return Err(CryptoError);
        }
        sealed.truncate(body_len);
        Ok(())
    }
}

fn random_salt() -> [u8; SALT_SIZE] {
    let mut salt = [0u8; SALT_SIZE];
    super::random_bytes(&mut salt);
    salt
}

/// Length of the ciphertext of a `plaintext_len`-byte message.
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    let full = plaintext_len / CHUNK_SIZE as u64;
    let rest = plaintext_len % CHUNK_SIZE as u64;
    HEADER_SIZE as u64 + full * SEALED_CHUNK_SIZE as u64 + rest + TAG_SIZE as u64
}

/// Plaintext length implied by a ciphertext length, or an error for lengths no message has.
pub fn plaintext_len(ciphertext_len: u64) -> Result<u64, CryptoError> {
    let body = ciphertext_len.checked_sub(HEADER_SIZE as u64).ok_or(CryptoError)?;
    let full = body / SEALED_CHUNK_SIZE as u64;
    let last = body % SEALED_CHUNK_SIZE as u64;
    if last < TAG_SIZE as u64 || full >= MAX_CHUNKS {
        return Err(CryptoError);
    }
    Ok(full * CHUNK_SIZE as u64 + last - TAG_SIZE as u64)
}

/// Streaming encryption into any writer: buffer up to one chunk, seal it when full, and seal the
/// short final chunk in [`Encryptor::finish`].
pub struct Encryptor<W: Write> {
    cipher: MessageCipher,
    buffer: Zeroizing<Vec<u8>>,
    index: u64,
    out: W,
}

impl<W: Write> fmt::Debug for Encryptor<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor").field("chunks_written", &self.index).finish_non_exhaustive()
    }
}

impl<W: Write> Encryptor<W> {
    /// Starts a message: draws a fresh salt and writes the header.
    pub fn new(input_key: &[u8], context: &[u8], out: W) -> io::Result<Self> {
        Self::with_salt(input_key, context, random_salt(), out)
    }

    fn with_salt(input_key: &[u8], context: &[u8], salt: [u8; SALT_SIZE], mut out: W) -> io::Result<Self> {
        let (cipher, commitment) = MessageCipher::derive(input_key, &salt, context)?;
        out.write_all(&salt)?;
        out.write_all(&commitment)?;
        Ok(Self { cipher, buffer: Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_SIZE)), index: 0, out })
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        let mut chunk = std::mem::replace(&mut *self.buffer, Vec::with_capacity(SEALED_CHUNK_SIZE));
        self.cipher.seal(self.index, &mut chunk)?;
        self.index += 1;
        self.out.write_all(&chunk)
    }

    /// Seals the final (short, possibly empty) chunk and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_chunk()?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            let take = (CHUNK_SIZE - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full chunk is never the final one, so it can be sealed at once.
            if self.buffer.len() == CHUNK_SIZE {
                self.flush_chunk()?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Messages at least this long are sealed and opened on several threads.
const PARALLEL_THRESHOLD: usize = 1 << 20;

/// Runs `f` over `(chunk index, sealed chunk slot)` pairs, on as many threads as the machine has
/// for large messages. Each slot is independent, so the work splits cleanly.
fn for_each_chunk<F>(body: &mut [u8], f: F) -> Result<(), CryptoError>
where
    F: Fn(u64, &mut [u8]) -> Result<(), CryptoError> + Sync,
{
    let threads = if body.len() >= PARALLEL_THRESHOLD {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
    } else {
        1
    };
    let chunks_total = body.len().div_ceil(SEALED_CHUNK_SIZE);
    if threads <= 1 || chunks_total < 2 {
        for (i, slot) in body.chunks_mut(SEALED_CHUNK_SIZE).enumerate() {
            f(i as u64, slot)?;
        }
        return Ok(());
    }
    let per_thread = chunks_total.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = body
            .chunks_mut(per_thread * SEALED_CHUNK_SIZE)
            .enumerate()
            .map(|(t, part)| {
                let f = &f;
                scope.spawn(move || {
                    for (j, slot) in part.chunks_mut(SEALED_CHUNK_SIZE).enumerate() {
                        f((t * per_thread + j) as u64, slot)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or(Err(CryptoError)))
    })
}

/// Encrypts a whole message into one buffer (chunks sealed in parallel for large messages).
pub fn encrypt(input_key: &[u8], context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    encrypt_into(input_key, context, plaintext, &mut out)?;
    Ok(out)
}

/// Appends the encryption of `plaintext` to `out` (which may already hold a prefix).
pub fn encrypt_into(input_key: &[u8], context: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let total = usize::try_from(ciphertext_len(plaintext.len() as u64)).map_err(|_| CryptoError)?;
    let salt = random_salt();
    let (cipher, commitment) = MessageCipher::derive(input_key, &salt, context)?;
    let start = out.len();
    out.resize(start + total, 0);
    let message = &mut out[start..];
    message[..SALT_SIZE].copy_from_slice(&salt);
    message[SALT_SIZE..HEADER_SIZE].copy_from_slice(&commitment);
    for_each_chunk(&mut message[HEADER_SIZE..], |index, slot| {
        let from = index as usize * CHUNK_SIZE;
        let body_len = slot.len() - TAG_SIZE;
        let (body, tag_slot) = slot.split_at_mut(body_len);
        body.copy_from_slice(&plaintext[from..from + body_len]);
        let nonce = cipher.nonce(index)?;
        let tag = cipher.aead.encrypt_inout_detached(&nonce, &[], body.into()).map_err(|_| CryptoError)?;
        tag_slot.copy_from_slice(&tag);
        Ok(())
    })
}

/// Decrypts a whole message in place: the chunks are opened where they lie (in parallel for
/// large messages) and the plaintext is compacted to the front of the same buffer, so no second
/// buffer of the message's size is allocated. On failure the buffer is wiped.
pub fn decrypt_owned(input_key: &[u8], context: &[u8], message: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    decrypt_owned_at(input_key, context, message, 0)
}

/// [`decrypt_owned`] for a message that starts at `start` within `buffer` (after a prefix); the
/// plaintext ends up at the front of the buffer.
pub fn decrypt_owned_at(
    input_key: &[u8],
    context: &[u8],
    mut buffer: Vec<u8>,
    start: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let result = (|| {
        let message = buffer.get_mut(start..).ok_or(CryptoError)?;
        let plain_len = usize::try_from(plaintext_len(message.len() as u64)?).map_err(|_| CryptoError)?;
        let cipher = open_header(input_key, context, message.get(..HEADER_SIZE).ok_or(CryptoError)?)?;
        let last_index = (plain_len / CHUNK_SIZE) as u64;
        for_each_chunk(&mut message[HEADER_SIZE..], |index, slot| {
            let is_final = index == last_index;
            let body_len = slot.len().checked_sub(TAG_SIZE).ok_or(CryptoError)?;
            let size_ok = if is_final { body_len < CHUNK_SIZE } else { body_len == CHUNK_SIZE };
            if !size_ok {
                return Err(CryptoError);
            }
            let (body, tag) = slot.split_at_mut(body_len);
            let tag = Tag::from(<[u8; TAG_SIZE]>::try_from(&tag[..]).map_err(|_| CryptoError)?);
            cipher.aead.decrypt_inout_detached(&cipher.nonce(index)?, &[], body.into(), &tag).map_err(|_| CryptoError)
        })?;
        // Compact: chunk i's plaintext moves to offset i * CHUNK_SIZE (always leftwards).
        for index in 0..=last_index as usize {
            let src = start + HEADER_SIZE + index * SEALED_CHUNK_SIZE;
            let n = if index as u64 == last_index { plain_len % CHUNK_SIZE } else { CHUNK_SIZE };
            buffer.copy_within(src..src + n, index * CHUNK_SIZE);
        }
        Ok(plain_len)
    })();
    match result {
        Ok(len) => {
            buffer.truncate(len);
            Ok(Zeroizing::new(buffer))
        }
        Err(e) => {
            buffer.zeroize();
            Err(e)
        }
    }
}

/// Checks the header and returns the message cipher. Fails before any chunk is touched.
fn open_header(input_key: &[u8], context: &[u8], header: &[u8]) -> Result<MessageCipher, CryptoError> {
    if header.len() != HEADER_SIZE {
        return Err(CryptoError);
    }
    let mut salt = [0u8; SALT_SIZE];
    salt.copy_from_slice(&header[..SALT_SIZE]);
    let (cipher, commitment) = MessageCipher::derive(input_key, &salt, context)?;
    if bool::from(commitment.ct_eq(&header[SALT_SIZE..])) { Ok(cipher) } else { Err(CryptoError) }
}

/// Decrypts a whole message.
pub fn decrypt(input_key: &[u8], context: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    decrypt_owned(input_key, context, ciphertext.to_vec())
}

/// Streaming decryption from any reader. Plaintext is released one authenticated chunk at a time;
/// truncation, trailing data and reordering are reported as errors, and once an error is seen every
/// later read fails too.
pub struct StreamDecryptor<R: Read> {
    cipher: MessageCipher,
    source: R,
    index: u64,
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
    state: StreamState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Reading,
    Done,
    Failed,
}

impl<R: Read> fmt::Debug for StreamDecryptor<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDecryptor").field("chunk", &self.index).finish_non_exhaustive()
    }
}

/// Reads until `buf` is full or the source ends; returns the count read.
fn read_full<R: Read>(source: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> StreamDecryptor<R> {
    /// Reads and checks the header (salt and key commitment).
    pub fn new(input_key: &[u8], context: &[u8], mut source: R) -> Result<Self, CryptoError> {
        let mut header = [0u8; HEADER_SIZE];
        let n = read_full(&mut source, &mut header).map_err(|_| CryptoError)?;
        if n != HEADER_SIZE {
            return Err(CryptoError);
        }
        let cipher = open_header(input_key, context, &header)?;
        Ok(Self { cipher, source, index: 0, plain: Zeroizing::new(Vec::new()), pos: 0, state: StreamState::Reading })
    }

    fn next_chunk(&mut self) -> Result<(), CryptoError> {
        // Read one byte past a full chunk: a full sealed chunk followed by more data is non-final;
        // one followed by the end of the stream means the required short final chunk is missing.
        let mut sealed = vec![0u8; SEALED_CHUNK_SIZE + 1];
        let n = read_full(&mut self.source, &mut sealed[..SEALED_CHUNK_SIZE]).map_err(|_| CryptoError)?;
        sealed.truncate(n);
        let is_final = n < SEALED_CHUNK_SIZE;
        self.cipher.open(self.index, &mut sealed, is_final)?;
        if is_final {
            let mut probe = [0u8; 1];
            if read_full(&mut self.source, &mut probe).map_err(|_| CryptoError)? != 0 {
                return Err(CryptoError);
            }
            self.state = StreamState::Done;
        }
        self.index += 1;
        self.plain = Zeroizing::new(sealed);
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for StreamDecryptor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.plain.len() {
                let n = (self.plain.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.state {
                StreamState::Done => return Ok(0),
                StreamState::Failed => return Err(CryptoError.into()),
                StreamState::Reading => {
                    if let Err(e) = self.next_chunk() {
                        self.state = StreamState::Failed;
                        self.plain = Zeroizing::new(Vec::new());
                        self.pos = 0;
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

/// A source that can read at arbitrary offsets (a file, a blob, a byte slice).
pub trait ReadAt {
    /// Total length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Whether the source is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl ReadAt for [u8] {
    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl ReadAt for std::fs::File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Authenticated random access to a message.
///
/// Opening checks the commitment, derives the plaintext length from the ciphertext length and
/// authenticates it by decrypting the final chunk; [`RandomAccess::read_range`] then decrypts only the
/// chunks a range touches.
pub struct RandomAccess<S: ReadAt> {
    cipher: MessageCipher,
    source: S,
    /// Offset of the message's first byte within `source`.
    base: u64,
    plaintext_len: u64,
    last_index: u64,
}

impl<S: ReadAt> fmt::Debug for RandomAccess<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomAccess").field("plaintext_len", &self.plaintext_len).finish_non_exhaustive()
    }
}

impl<S: ReadAt> RandomAccess<S> {
    /// Opens a message that starts at `base` within `source` and runs to its end.
    pub fn open(input_key: &[u8], context: &[u8], source: S, base: u64) -> Result<Self, CryptoError> {
        let total = source.len().map_err(|_| CryptoError)?;
        let message_len = total.checked_sub(base).ok_or(CryptoError)?;
        let plaintext_len = plaintext_len(message_len)?;
        let mut header = [0u8; HEADER_SIZE];
        source.read_exact_at(&mut header, base).map_err(|_| CryptoError)?;
        let cipher = open_header(input_key, context, &header)?;
        let last_index = plaintext_len / CHUNK_SIZE as u64;
        let this = Self { cipher, source, base, plaintext_len, last_index };
        // Authenticate the length: the final chunk must decrypt at its index.
        this.chunk(last_index)?;
        Ok(this)
    }

    /// The authenticated plaintext length.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Number of chunks, the final short one included.
    pub fn chunk_count(&self) -> u64 {
        self.last_index + 1
    }

    /// Decrypts chunk `index` (which must exist).
    pub fn chunk(&self, index: u64) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if index > self.last_index {
            return Err(CryptoError);
        }
        let is_final = index == self.last_index;
        let len =
            if is_final { (self.plaintext_len % CHUNK_SIZE as u64) as usize + TAG_SIZE } else { SEALED_CHUNK_SIZE };
        let offset = self.base + HEADER_SIZE as u64 + index * SEALED_CHUNK_SIZE as u64;
        let mut sealed = vec![0u8; len];
        self.source.read_exact_at(&mut sealed, offset).map_err(|_| CryptoError)?;
        self.cipher.open(index, &mut sealed, is_final)?;
        Ok(Zeroizing::new(sealed))
    }

    /// Reads `len` plaintext bytes at `offset`, decrypting only the chunks the range touches.
    pub fn read_range(&self, offset: u64, len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let end = offset.checked_add(len as u64).ok_or(CryptoError)?;
        if end > self.plaintext_len {
            return Err(CryptoError);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        if len == 0 {
            return Ok(out);
        }
        let first = offset / CHUNK_SIZE as u64;
        let last = (end - 1) / CHUNK_SIZE as u64;
        for index in first..=last {
            let chunk = self.chunk(index)?;
            let chunk_start = index * CHUNK_SIZE as u64;
            let from = offset.saturating_sub(chunk_start) as usize;
            let to = ((end - chunk_start) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(out)
    }

    /// The source being read.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Gives the source back.
    pub fn into_inner(self) -> S {
        self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_chunking_rule() {
        for len in [0u64, 1, 100, 16383, 16384, 16385, 32768, 40000] {
            let ct = ciphertext_len(len);
            assert_eq!(plaintext_len(ct), Ok(len), "len {len}");
        }
        // A multiple of full chunks with no final chunk is truncated; tag-less tails are invalid.
        assert!(plaintext_len(56 + SEALED_CHUNK_SIZE as u64).is_err());
        assert!(plaintext_len(56 + 15).is_err());
        assert!(plaintext_len(55).is_err());
    }

    #[test]
    fn stream_round_trip_in_odd_writes() {
        let key = [7u8; 32];
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut enc = Encryptor::new(&key, b"ctx", Vec::new()).expect("encryptor");
        for part in data.chunks(777) {
            enc.write_all(part).expect("write");
        }
        let ct = enc.finish().expect("finish");
        assert_eq!(ct.len() as u64, ciphertext_len(data.len() as u64));
        assert_eq!(&decrypt(&key, b"ctx", &ct).expect("decrypt")[..], &data[..]);
        assert!(decrypt(&key, b"ctx2", &ct).is_err());
    }
}
