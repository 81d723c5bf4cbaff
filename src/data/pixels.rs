//! The bytes of an image set: owned in memory, or a window of a memory-mapped cache file.

use std::ops::Deref;
use std::sync::Arc;

use memmap2::Mmap;

/// Pixel bytes, read like a `&[u8]` (`Deref`), either owned or mapped from a decoded cache
/// file (pages are read from disk when touched, so a set larger than memory still trains).
#[derive(Clone)]
pub struct Pixels(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Arc<Vec<u8>>),
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
}

impl Pixels {
    /// `len` bytes of `map` from `start`; `None` when they do not lie inside it.
    pub(crate) fn mapped(map: Arc<Mmap>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        (end <= map.len()).then_some(Self(Repr::Mapped { map, start, len }))
    }

    /// Whether the bytes are mapped from a file rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped { .. })
    }
}

impl Deref for Pixels {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

impl From<Vec<u8>> for Pixels {
    fn from(v: Vec<u8>) -> Self {
        Self(Repr::Owned(Arc::new(v)))
    }
}

impl PartialEq for Pixels {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pixels({} bytes, {})",
            self.len(),
            if self.is_mapped() {
                "mapped"
            } else {
                "in memory"
            }
        )
    }
}
