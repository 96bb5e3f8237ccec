//! Record schemas (§3).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Object, Result};

/// Largest record, and largest chunk plaintext.
pub const MAX_RECORD_SIZE: usize = 16 << 20;
/// Most dimensions a record may have.
pub const MAX_DIMS: usize = 8;

/// Element type of record features and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum DType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DType {
    /// All types, in code order.
    pub const ALL: [DType; 10] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F32,
        DType::F64,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The code written in shard headers.
    pub fn code(self) -> u8 {
        DType::ALL
            .iter()
            .position(|d| *d == self)
            .map(|p| p as u8 + 1)
            .unwrap_or(0)
    }

    /// The type for a header code.
    pub fn from_code(code: u8) -> Option<Self> {
        DType::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Lowercase name (`u8`, `f32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::U16 => "u16",
            DType::I16 => "i16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::U64 => "u64",
            DType::I64 => "i64",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What every record of a dataset looks like.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Element type of the features.
    pub dtype: DType,
    /// Feature dimensions, row-major; empty for a scalar.
    pub shape: Vec<u32>,
    /// Label type, if records carry a label.
    pub label: Option<DType>,
}

impl Schema {
    /// The schema of raw bytes: one `u8` per record, no label.
    pub fn raw() -> Self {
        Schema {
            dtype: DType::U8,
            shape: vec![],
            label: None,
        }
    }

    /// Number of feature elements per record.
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes of the features of one record.
    pub fn feature_size(&self) -> usize {
        self.elements() as usize * self.dtype.size()
    }

    /// Bytes of one record (features, then label).
    pub fn record_size(&self) -> usize {
        self.feature_size() + self.label.map_or(0, DType::size)
    }

    /// Checks the limits of §3.
    pub fn validate(&self, object: &Object) -> Result<()> {
        if self.shape.len() > MAX_DIMS {
            return Err(Error::malformed(
                object,
                format!("more than {MAX_DIMS} dimensions"),
            ));
        }
        if self.shape.contains(&0) {
            return Err(Error::malformed(object, "a dimension is zero"));
        }
        let mut size: u128 = self.dtype.size() as u128;
        for &d in &self.shape {
            size = size.saturating_mul(d as u128);
        }
        size = size.saturating_add(self.label.map_or(0, DType::size) as u128);
        if size > MAX_RECORD_SIZE as u128 {
            return Err(Error::malformed(object, "record larger than 16 MiB"));
        }
        Ok(())
    }

    /// Records per chunk so that a chunk's plaintext stays near `target` bytes (at least
    /// one record per chunk).
    pub fn records_per_chunk_for(&self, target: usize) -> u32 {
        (target / self.record_size().max(1)).clamp(1, u32::MAX as usize) as u32
    }
}

/// Chunk plaintext size the sealer aims for (64 KiB, as in age).
pub const DEFAULT_CHUNK_TARGET: usize = 64 << 10;

/// Whether `name` is a valid split name (§3).
pub fn valid_split_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
