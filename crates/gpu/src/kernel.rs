//! The CubeCL kernels. Everything here runs on the device.
//!
//! `open_chunks`: one cube per chunk (`CUBE_DIM` units). The units first compute the
//! chunk's Poly1305 tag together, each over its own run of 16-byte blocks, then combine
//! their partial sums (see below); only when the tag matches do they decrypt the chunk
//! with the ChaCha20 keystream. A chunk whose tag fails gets zeros, so unauthenticated
//! plaintext never exists, and its status word stays 0.
//!
//! Poly1305 runs in 32-bit integer arithmetic only (WGSL has no 64-bit integers): an
//! element of GF(2^130 − 5) is 12 limbs of 11 bits, and 2^132 ≡ 20. Products of
//! limbs below 2^12.01 and 20 × limbs below 2^11.01, summed 12 at a time, stay below
//! 2^31, so no product overflows (bounds in the comments of `fe_mul`).
//!
//! Splitting the tag: with blocks `c_1 … c_M`, Poly1305 is `Σ c_i · r^(M−i+1)`. A unit
//! that owns blocks `a..=e` computes `h = Σ_{i=a..=e} c_i · r^(e−i+1)` by Horner's rule,
//! multiplies it by `r^(M−e)` (square-and-multiply) and the sum of all units' results is
//! the polynomial. Unit 0 adds the partial sums, reduces modulo p, adds `s` and compares
//! with the tag.

// Kernel code is expanded by `#[cube]`: it uses the operators CubeCL knows (no
// `div_ceil`), and kernels take their buffers as separate arguments.
#![allow(clippy::manual_div_ceil, clippy::too_many_arguments)]

use cubecl::prelude::*;

/// Words of chunk metadata per chunk in the `meta` array.
pub const META_WORDS: usize = 12;
/// Meta word: offset of the chunk's ciphertext in `data`, in 32-bit words (a multiple of 16).
pub const M_OFFSET: usize = 0;
/// Meta word: ciphertext length in bytes (tag excluded).
pub const M_LEN: usize = 1;
/// Meta word: key slot (8 words each in `keys`).
pub const M_KEY: usize = 2;
/// Meta word: associated-data slot (16 words each in `aad`).
pub const M_AAD: usize = 3;
/// Meta words 4..7: the 96-bit nonce as three little-endian words.
pub const M_NONCE: usize = 4;
/// Meta words 7..11: the 16-byte tag as four little-endian words.
pub const M_TAG: usize = 7;
/// Meta word: associated-data length in bytes (at most 64).
pub const M_AAD_LEN: usize = 11;
/// Words per associated-data slot.
pub const AAD_WORDS: usize = 16;
/// Units per cube in `open_chunks`.
pub const UNITS: u32 = 128;

#[cube]
fn rotl(x: u32, #[comptime] n: u32) -> u32 {
    (x << n) | (x >> comptime!(32 - n))
}

#[cube]
fn quarter(
    s: &mut Array<u32>,
    #[comptime] a: usize,
    #[comptime] b: usize,
    #[comptime] c: usize,
    #[comptime] d: usize,
) {
    s[a] += s[b];
    s[d] = rotl(s[d] ^ s[a], 16u32);
    s[c] += s[d];
    s[b] = rotl(s[b] ^ s[c], 12u32);
    s[a] += s[b];
    s[d] = rotl(s[d] ^ s[a], 8u32);
    s[c] += s[d];
    s[b] = rotl(s[b] ^ s[c], 7u32);
}

/// One ChaCha20 block (RFC 8439 §2.3) into `out` (16 words).
#[cube]
fn chacha_block(
    keys: &Array<u32>,
    key_base: usize,
    counter: u32,
    n0: u32,
    n1: u32,
    n2: u32,
    out: &mut Array<u32>,
) {
    let mut s = Array::<u32>::new(16usize);
    s[0] = 0x6170_7865u32;
    s[1] = 0x3320_646eu32;
    s[2] = 0x7962_2d32u32;
    s[3] = 0x6b20_6574u32;
    #[unroll]
    for i in 0..8usize {
        s[4 + i] = keys[key_base + i];
    }
    s[12] = counter;
    s[13] = n0;
    s[14] = n1;
    s[15] = n2;
    #[unroll]
    for i in 0..16usize {
        out[i] = s[i];
    }
    for _ in 0..10u32 {
        quarter(out, 0usize, 4usize, 8usize, 12usize);
        quarter(out, 1usize, 5usize, 9usize, 13usize);
        quarter(out, 2usize, 6usize, 10usize, 14usize);
        quarter(out, 3usize, 7usize, 11usize, 15usize);
        quarter(out, 0usize, 5usize, 10usize, 15usize);
        quarter(out, 1usize, 6usize, 11usize, 12usize);
        quarter(out, 2usize, 7usize, 8usize, 13usize);
        quarter(out, 3usize, 4usize, 9usize, 14usize);
    }
    #[unroll]
    for i in 0..16usize {
        out[i] += s[i];
    }
}

/// Splits a 130-bit value given as five little-endian words (the fifth holds bits
/// 128..) into 12 limbs of 11 bits.
#[cube]
fn fe_from_words(w: &Array<u32>, out: &mut Array<u32>) {
    #[unroll]
    for k in 0..12usize {
        let start = comptime!(k * 11);
        let wi = comptime!(start / 32);
        let sh = comptime!((start % 32) as u32);
        let mut v = w[wi] >> sh;
        if comptime!(sh > 21) {
            v |= w[wi + 1] << comptime!(32 - sh);
        }
        out[k] = v & 0x7ffu32;
    }
}

/// Carries every limb into the next; what leaves limb 11 (bits 132 and up) re-enters
/// limb 0 times 20. Run twice after a product: limbs are then below 2^11 except limb 0,
/// below 2^11 + 20.
#[cube]
fn fe_carry(h: &mut Array<u32>) {
    #[unroll]
    for k in 0..11usize {
        h[k + 1] += h[k] >> 11u32;
        h[k] &= 0x7ffu32;
    }
    let top = h[11] >> 11u32;
    h[11] &= 0x7ffu32;
    h[0] += top * 20u32;
}

/// `out = a · b mod (2^130 − 5)`, partially reduced. `a`'s limbs below 2^12.01, `b`'s
/// below 2^11.01: every column sums at most 1 + 11·20 = 221 products below 2^23.02, so
/// below 2^30.8, and a carry adds less than 2^21.
#[cube]
fn fe_mul(a: &Array<u32>, b: &Array<u32>, out: &mut Array<u32>) {
    let mut b20 = Array::<u32>::new(12usize);
    #[unroll]
    for j in 0..12usize {
        b20[j] = b[j] * 20u32;
    }
    #[unroll]
    for k in 0..12usize {
        let mut d = 0u32;
        #[unroll]
        for i in 0..12usize {
            if comptime!(i <= k) {
                d += a[i] * b[comptime!(k - i)];
            } else {
                d += a[i] * b20[comptime!(12 + k - i)];
            }
        }
        out[k] = d;
    }
    fe_carry(out);
    fe_carry(out);
}

#[cube]
fn fe_copy(src: &Array<u32>, dst: &mut Array<u32>) {
    #[unroll]
    for k in 0..12usize {
        dst[k] = src[k];
    }
}

/// Loads 16-byte block `j` of the Poly1305 input of the chunk (associated data, zero
/// padding, ciphertext, zero padding, the two lengths) as five words, the fifth = 1.
#[cube]
fn load_block(
    data: &Array<u32>,
    aad: &Array<u32>,
    j: u32,
    aad_blocks: u32,
    ct_blocks: u32,
    aad_base: usize,
    ct_base: usize,
    aad_len: u32,
    ct_len: u32,
    w: &mut Array<u32>,
) {
    if j < aad_blocks {
        let base = aad_base + (j * 4u32) as usize;
        #[unroll]
        for i in 0..4usize {
            w[i] = aad[base + i];
        }
    } else if j < aad_blocks + ct_blocks {
        let base = ct_base + ((j - aad_blocks) * 4u32) as usize;
        #[unroll]
        for i in 0..4usize {
            w[i] = data[base + i];
        }
    } else {
        w[0] = aad_len;
        w[1] = 0u32;
        w[2] = ct_len;
        w[3] = 0u32;
    }
    w[4] = 1u32;
}

/// Decrypts and authenticates one chunk per cube. `data` holds the ciphertexts (each
/// zero-padded to a multiple of 64 bytes, at `meta[M_OFFSET]`); `out` receives the
/// plaintexts at the same offsets (zeros past each chunk's end, and for a chunk whose
/// tag fails). `status[chunk]` becomes 1 for an authentic chunk and 0 otherwise.
#[cube(launch)]
pub fn open_chunks(
    data: &Array<u32>,
    meta: &Array<u32>,
    keys: &Array<u32>,
    aad: &Array<u32>,
    out: &mut Array<u32>,
    status: &mut Array<u32>,
    chunks: u32,
) {
    let chunk = CUBE_POS as u32;
    // All units of a cube take the same branch here, so no unit misses a barrier.
    if chunk < chunks {
        let mb = (chunk as usize) * META_WORDS;
        let ct_base = meta[mb + M_OFFSET] as usize;
        let ct_len = meta[mb + M_LEN];
        let key_base = (meta[mb + M_KEY] as usize) * 8usize;
        let aad_base = (meta[mb + M_AAD] as usize) * AAD_WORDS;
        let aad_len = meta[mb + M_AAD_LEN];
        let n0 = meta[mb + M_NONCE];
        let n1 = meta[mb + M_NONCE + 1];
        let n2 = meta[mb + M_NONCE + 2];

        // The one-time Poly1305 key: the first 32 bytes of block 0.
        let mut ks = Array::<u32>::new(16usize);
        chacha_block(keys, key_base, 0u32, n0, n1, n2, &mut ks);
        let mut rw = Array::<u32>::new(5usize);
        rw[0] = ks[0] & 0x0fff_ffffu32;
        rw[1] = ks[1] & 0x0fff_fffcu32;
        rw[2] = ks[2] & 0x0fff_fffcu32;
        rw[3] = ks[3] & 0x0fff_fffcu32;
        rw[4] = 0u32;
        let mut r = Array::<u32>::new(12usize);
        fe_from_words(&rw, &mut r);

        let aad_blocks = (aad_len + 15u32) / 16u32;
        let ct_blocks = (ct_len + 15u32) / 16u32;
        let blocks = aad_blocks + ct_blocks + 1u32;
        let per_unit = (blocks + UNITS - 1u32) / UNITS;
        let first = UNIT_POS * per_unit;
        let mut end = first + per_unit;
        if end > blocks {
            end = blocks;
        }

        let mut acc = Array::<u32>::new(12usize);
        #[unroll]
        for k in 0..12usize {
            acc[k] = 0u32;
        }
        if first < end {
            let mut h = Array::<u32>::new(12usize);
            let mut t = Array::<u32>::new(12usize);
            let mut c = Array::<u32>::new(12usize);
            let mut w = Array::<u32>::new(5usize);
            #[unroll]
            for k in 0..12usize {
                h[k] = 0u32;
            }
            for j in first..end {
                load_block(
                    data, aad, j, aad_blocks, ct_blocks, aad_base, ct_base, aad_len, ct_len, &mut w,
                );
                fe_from_words(&w, &mut c);
                #[unroll]
                for k in 0..12usize {
                    h[k] += c[k];
                }
                fe_mul(&h, &r, &mut t);
                fe_copy(&t, &mut h);
            }
            // h · r^(blocks − end), by square-and-multiply.
            let mut e = blocks - end;
            let mut base = Array::<u32>::new(12usize);
            fe_copy(&r, &mut base);
            while e > 0u32 {
                if (e & 1u32) == 1u32 {
                    fe_mul(&h, &base, &mut t);
                    fe_copy(&t, &mut h);
                }
                fe_mul(&base, &base, &mut t);
                fe_copy(&t, &mut base);
                e >>= 1u32;
            }
            fe_copy(&h, &mut acc);
        }

        let mut partial = SharedMemory::<u32>::new(comptime!(UNITS as usize * 12));
        let mut verdict = SharedMemory::<u32>::new(1usize);
        let me = (UNIT_POS as usize) * 12usize;
        #[unroll]
        for k in 0..12usize {
            partial[me + k] = acc[k];
        }
        sync_cube();

        if UNIT_POS == 0u32 {
            // Each partial limb is below 2^11.01; 128 of them sum below 2^18.1.
            let mut h = Array::<u32>::new(12usize);
            #[unroll]
            for k in 0..12usize {
                h[k] = 0u32;
            }
            for u in 0..UNITS {
                let b = (u as usize) * 12usize;
                #[unroll]
                for k in 0..12usize {
                    h[k] += partial[b + k];
                }
            }
            fe_carry(&mut h);
            fe_carry(&mut h);
            fe_carry(&mut h);
            // Now below 2^132 with limbs below 2^11 (limb 0 below 2^11 + 20): fold the
            // bits from 130 up back in (2^130 ≡ 5), twice, leaving h < 2^130.
            #[unroll]
            for _ in 0..2u32 {
                let top = h[11] >> 9u32;
                h[11] &= 0x1ffu32;
                h[0] += top * 5u32;
                #[unroll]
                for k in 0..11usize {
                    h[k + 1] += h[k] >> 11u32;
                    h[k] &= 0x7ffu32;
                }
            }
            // h mod p: subtract p when h + 5 reaches 2^130 (chosen without a branch).
            let mut g = Array::<u32>::new(12usize);
            g[0] = h[0] + 5u32;
            #[unroll]
            for k in 0..11usize {
                g[k + 1] = h[k + 1] + (g[k] >> 11u32);
                g[k] &= 0x7ffu32;
            }
            let over = g[11] >> 9u32;
            g[11] &= 0x1ffu32;
            let take_g = 0u32 - over;
            #[unroll]
            for k in 0..12usize {
                h[k] = (g[k] & take_g) | (h[k] & !take_g);
            }
            // Low 128 bits as words, plus s, modulo 2^128.
            let mut hw = Array::<u32>::new(5usize);
            #[unroll]
            for i in 0..5usize {
                hw[i] = 0u32;
            }
            #[unroll]
            for k in 0..12usize {
                let start = comptime!(k * 11);
                let wi = comptime!(start / 32);
                let sh = comptime!((start % 32) as u32);
                hw[wi] |= h[k] << sh;
                if comptime!(sh > 21) {
                    hw[wi + 1] |= h[k] >> comptime!(32 - sh);
                }
            }
            let mut carry = 0u32;
            let mut diff = 0u32;
            #[unroll]
            for i in 0..4usize {
                let s = ks[4 + i];
                let sum = hw[i] + s;
                let c1 = select(sum < s, 1u32, 0u32);
                let sum2 = sum + carry;
                let c2 = select(sum2 < sum, 1u32, 0u32);
                carry = c1 + c2;
                diff |= sum2 ^ meta[mb + M_TAG + i];
            }
            verdict[0] = select(diff == 0u32, 1u32, 0u32);
            status[chunk as usize] = verdict[0];
        }
        sync_cube();
        let ok = verdict[0];

        // Decrypt: unit u takes 64-byte blocks u, u + UNITS, … with counters from 1.
        let ct_words = (ct_len + 3u32) / 4u32;
        let ks_blocks = (ct_len + 63u32) / 64u32;
        let mut b = UNIT_POS;
        while b < ks_blocks {
            chacha_block(keys, key_base, b + 1u32, n0, n1, n2, &mut ks);
            #[unroll]
            for i in 0..16usize {
                let wi = b * 16u32 + i as u32;
                let at = ct_base + wi as usize;
                let mut v = 0u32;
                if ok == 1u32 && wi < ct_words {
                    v = data[at] ^ ks[i];
                    let end_byte = (wi + 1u32) * 4u32;
                    if end_byte > ct_len {
                        // A partial last word: keep only the bytes that exist.
                        let keep = ct_len - wi * 4u32;
                        v &= (1u32 << (keep * 8u32)) - 1u32;
                    }
                }
                out[at] = v;
            }
            b += UNITS;
        }
    }
}

/// Gathers the records of one batch from decrypted `u8` records into f32 features
/// (`features[n·elements]`, each byte mapped through the 256-entry table `scale`, which
/// the host fills with exactly the values its CPU path computes) and integer labels.
/// Record `r` starts at byte `offsets[r]` of `plain`: `elements` feature bytes, then one
/// label byte. One unit per output element.
#[cube(launch)]
pub fn gather_u8(
    plain: &Array<u32>,
    offsets: &Array<u32>,
    indices: &Array<u32>,
    scale: &Array<f32>,
    features: &mut Array<f32>,
    labels: &mut Array<i32>,
    batch: u32,
    elements: u32,
) {
    let pos = (CUBE_POS * CUBE_DIM as usize + UNIT_POS as usize) as u32;
    if pos < batch * elements {
        let n = pos / elements;
        let e = pos % elements;
        let start = offsets[indices[n as usize] as usize];
        let byte = start + e;
        let word = plain[(byte / 4u32) as usize];
        let v = (word >> ((byte % 4u32) * 8u32)) & 0xffu32;
        features[pos as usize] = scale[v as usize];
        if e == 0u32 {
            let lb = start + elements;
            let lw = plain[(lb / 4u32) as usize];
            labels[n as usize] = i32::cast_from((lw >> ((lb % 4u32) * 8u32)) & 0xffu32);
        }
    }
}

/// Copies `words` words: the device-to-device bandwidth reference.
#[cfg(feature = "bench")]
#[cube(launch)]
pub fn copy_words(src: &Array<u32>, dst: &mut Array<u32>, words: u32) {
    let pos = CUBE_POS * CUBE_DIM as usize + UNIT_POS as usize;
    if (pos as u32) < words {
        dst[pos] = src[pos];
    }
}

/// Overwrites `words` words with zeros (wiping plaintext before a buffer is freed).
#[cube(launch)]
pub fn fill_zero(dst: &mut Array<u32>, words: u32) {
    let pos = CUBE_POS * CUBE_DIM as usize + UNIT_POS as usize;
    if (pos as u32) < words {
        dst[pos] = 0u32;
    }
}
