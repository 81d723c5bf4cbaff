//! Transformed kernels kept from call to call: sampling runs every convolution of the U-Net
//! with the same weights at each of its hundreds of steps, and transforming a 256-channel
//! kernel (`U = G g G^T`, megabytes written) cost as much as the products of a batch-1 step
//! (`transform_kernel` was 19 % of CIFAR-10 batch-1 sampling by `perf`). The direct kernel's
//! packed weights ([`Transform::Packed`]) are kept the same way (`avx512::pack` was 17 % of
//! MNIST batch-1 sampling).
//!
//! An entry is found by the weights' address and length. Weights seen for the first time
//! leave only a checksum; when the same weights (same checksum, same address) come again,
//! the entry keeps a clone of their tensor and the transforms. flex's tensors share their
//! bytes behind a reference count and copy before any write to shared bytes, so while the
//! entry holds its clone those bytes can neither change nor be freed and reused: a later
//! call with the same address and length has the same weights, bit for bit. Weights that an
//! optimiser changes at every step are never kept (their checksum differs each time), so
//! training neither pays for the clone nor holds old weights alive. The kept transforms stay
//! under [`transformed_kernel_capacity`] bytes: when full, a kernel is kept only in the place
//! of one unused for a while, so that sampling keeps what fits instead of cycling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::flex::FlexTensor;

/// Which transform of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transform {
    /// F(2x2, 3x3)'s `[16, c_out, c_in]`.
    Small,
    /// F(4x4, 3x3)'s `[36, c_out, c_in]`.
    Large,
    /// The direct kernel's packing of a forward pass's weights (`avx512::pack`).
    Packed,
    /// The four phases' 2x2 kernels of a 3x3 kernel (`upsampled`), a tensor: the phase
    /// convolutions' weights, whose packings are kept in turn under its address. Asked for
    /// through [`transformed_tensor`] only (the other transforms through [`transformed`]).
    Phases,
}

static CAPACITY: AtomicUsize = AtomicUsize::new(1 << 30);

/// Sets the most bytes the kept transformed kernels of Winograd's convolutions (and the direct
/// kernel's packed ones) may hold (default 1 GiB; the CIFAR-10 U-Net's 3x3 layers of 128-256
/// channels kept 811 MiB after sampling at batch 16 and at batch 1, the MNIST U-Net's packed
/// kernels 3 MiB, `examples/speed`); 0 keeps none, so that every call transforms or packs its
/// kernel again.
/// Kept kernels over the new capacity are dropped at the next convolution, the least
/// recently used first.
pub fn set_transformed_kernel_capacity(bytes: usize) {
    CAPACITY.store(bytes, Ordering::Relaxed);
}

/// The capacity set by [`set_transformed_kernel_capacity`].
pub fn transformed_kernel_capacity() -> usize {
    CAPACITY.load(Ordering::Relaxed)
}

/// A kept transform: values, or a tensor (whose address later calls can key on).
#[derive(Clone)]
enum Value {
    Values(Arc<Vec<f32>>),
    Tensor(FlexTensor),
}

impl Value {
    fn bytes(&self) -> usize {
        match self {
            Value::Values(v) => 4 * v.len(),
            Value::Tensor(t) => t.bytes().len(),
        }
    }
}

/// A kept kernel: its tensor (so that its bytes stay as they are) and its transforms, one
/// slot per [`Transform`].
struct Kept {
    _owner: FlexTensor,
    slots: [Option<Value>; 4],
}

impl Kept {
    fn slot(&mut self, t: Transform) -> &mut Option<Value> {
        let i = match t {
            Transform::Small => 0,
            Transform::Large => 1,
            Transform::Packed => 2,
            Transform::Phases => 3,
        };
        &mut self.slots[i]
    }

    fn bytes(&self) -> usize {
        self.slots.iter().flatten().map(Value::bytes).sum()
    }
}

struct Entry {
    address: usize,
    len: usize,
    shape: [usize; 2],
    checksum: u64,
    kept: Option<Kept>,
    used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.kept.as_ref().map_or(0, Kept::bytes)
    }
}

struct Cache {
    entries: Vec<Entry>,
    clock: u64,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    entries: Vec::new(),
    clock: 0,
});

/// The most first sightings kept (kept entries are bounded by the capacity).
const MAX_ENTRIES: usize = 4096;

/// A 64-bit checksum of `w`'s bits (FNV-1a over 32-bit words in 8 interleaved lanes).
fn checksum(w: &[f32]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut lanes = [0xcbf2_9ce4_8422_2325u64; 8];
    let chunks = w.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (h, &v) in lanes.iter_mut().zip(c) {
            *h = (*h ^ u64::from(v.to_bits())).wrapping_mul(PRIME);
        }
    }
    for (h, &v) in lanes.iter_mut().zip(rest) {
        *h = (*h ^ u64::from(v.to_bits()) ^ 0xff).wrapping_mul(PRIME);
    }
    lanes
        .iter()
        .fold(w.len() as u64, |acc, &h| (acc ^ h).wrapping_mul(PRIME))
}

/// The transform of the kernel `w` (`[c_out, c_in, k, k]`, the values of `owner`): kept
/// from an earlier call with the same weights, else `compute()`, kept when these weights
/// were seen at the previous call and there is room (see the module's documentation).
pub(crate) fn transformed(
    w: &[f32],
    owner: &FlexTensor,
    transform: Transform,
    shape: [usize; 2],
    compute: impl FnOnce() -> Vec<f32>,
) -> Arc<Vec<f32>> {
    let compute = || Value::Values(Arc::new(compute()));
    match kept_or_computed(w, owner, transform, shape, compute) {
        Value::Values(v) => v,
        Value::Tensor(_) => unreachable!("values computed as values"),
    }
}

/// [`transformed`] for a transform that is a tensor ([`Transform::Phases`]): the same tensor
/// (the same bytes) while the weights are kept.
pub(crate) fn transformed_tensor(
    w: &[f32],
    owner: &FlexTensor,
    transform: Transform,
    shape: [usize; 2],
    compute: impl FnOnce() -> FlexTensor,
) -> FlexTensor {
    let compute = || Value::Tensor(compute());
    match kept_or_computed(w, owner, transform, shape, compute) {
        Value::Tensor(t) => t,
        Value::Values(_) => unreachable!("a tensor computed as a tensor"),
    }
}

/// What [`transformed`] and [`transformed_tensor`] share: the look-up, and keeping.
fn kept_or_computed(
    w: &[f32],
    owner: &FlexTensor,
    transform: Transform,
    shape: [usize; 2],
    compute: impl FnOnce() -> Value,
) -> Value {
    let (address, len) = (w.as_ptr() as usize, w.len());
    let matches = |e: &Entry| e.address == address && e.len == len && e.shape == shape;
    let lock = || CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let kept_before = {
        let mut cache = lock();
        cache.clock += 1;
        let clock = cache.clock;
        let (capacity, total) = (transformed_kernel_capacity(), cache.bytes());
        if total > capacity {
            drop_until(&mut cache, total - capacity, 0);
        }
        match cache.entries.iter_mut().find(|e| matches(e)) {
            Some(e) => {
                e.used = clock;
                match e.kept.as_mut() {
                    // Held by the entry: these are the same bytes.
                    Some(kept) => match kept.slot(transform) {
                        Some(u) => return u.clone(),
                        None => true,
                    },
                    None => false,
                }
            }
            None => false,
        }
    };
    let sum = (!kept_before).then(|| checksum(w));
    let u = compute();
    let need = u.bytes();
    let mut cache = lock();
    let room = room_for(&mut cache, need);
    match cache.entries.iter_mut().find(|e| matches(e)) {
        Some(e) => match (&mut e.kept, sum) {
            (Some(kept), _) => {
                if room {
                    *kept.slot(transform) = Some(u.clone());
                }
            }
            (None, Some(sum)) if e.checksum == sum && room => {
                let mut kept = Kept {
                    _owner: owner.clone(),
                    slots: [const { None }; 4],
                };
                *kept.slot(transform) = Some(u.clone());
                e.kept = Some(kept);
            }
            (None, sum) => e.checksum = sum.unwrap_or(0),
        },
        None => {
            if cache.entries.len() >= MAX_ENTRIES {
                // The least recently used first sighting makes way.
                let oldest = (0..cache.entries.len())
                    .filter(|&i| cache.entries[i].kept.is_none())
                    .min_by_key(|&i| cache.entries[i].used);
                if let Some(i) = oldest {
                    cache.entries.swap_remove(i);
                }
            }
            let used = cache.clock;
            cache.entries.push(Entry {
                address,
                len,
                shape,
                checksum: sum.unwrap_or(0),
                kept: None,
                used,
            });
        }
    }
    u
}

/// Whether the kernel `w` (`[c_out, c_in, 3, 3]` for `shape = [c_out, c_in]`) is kept, so
/// that [`transformed`] will return its transforms without computing them (a slot not yet
/// filled is computed once): true from the third call with the same, unchanged weights
/// (sampling), never for weights that change between calls (training).
pub(crate) fn is_kept(w: &[f32], shape: [usize; 2]) -> bool {
    let (address, len) = (w.as_ptr() as usize, w.len());
    CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entries
        .iter()
        .any(|e| e.address == address && e.len == len && e.shape == shape && e.kept.is_some())
}

/// Calls after which a kept kernel nobody asked for may make way for another (a CIFAR-10
/// U-Net sampling step runs about 40 of these convolutions).
const STALE_CALLS: u64 = 4096;

impl Cache {
    fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::bytes).sum()
    }
}

/// Whether `need` more bytes fit the capacity, after dropping kept kernels unused for
/// [`STALE_CALLS`] calls if they must. Kept kernels in use are never dropped for new ones:
/// sampling asks for every layer's kernel in turn, and a least-recently-used rule over a
/// cycle longer than the capacity would drop each just before it is asked for again.
fn room_for(cache: &mut Cache, need: usize) -> bool {
    let capacity = transformed_kernel_capacity();
    let total = cache.bytes();
    if total + need <= capacity {
        return true;
    }
    let stale_before = cache.clock.saturating_sub(STALE_CALLS);
    let freed = drop_until(cache, total + need - capacity, stale_before);
    total + need - freed <= capacity
}

/// Drops kept entries last used before call `before` (any, when 0), the least recently
/// used first, until `bytes` are freed; returns the bytes freed.
fn drop_until(cache: &mut Cache, bytes: usize, before: u64) -> usize {
    let mut freed = 0;
    while freed < bytes {
        let oldest = (0..cache.entries.len())
            .filter(|&i| {
                let e = &cache.entries[i];
                e.kept.is_some() && (before == 0 || e.used < before)
            })
            .min_by_key(|&i| cache.entries[i].used);
        let Some(i) = oldest else { break };
        freed += cache.entries.swap_remove(i).bytes();
    }
    freed
}

/// The bytes the kept transformed kernels hold now.
pub fn transformed_kernel_bytes() -> usize {
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex_tensor::{f32s, flex_tensor};

    /// Weights seen a second time are kept and later calls reuse their transform; other
    /// weights (another tensor, so another buffer) are transformed again.
    #[test]
    fn reuses_the_transform_of_kept_weights_only() {
        let mut calls = 0;
        let mut get = |t: &FlexTensor, kind: Transform| {
            let w = f32s(t);
            transformed(w, t, kind, [2, 1], || {
                calls += 1;
                vec![w[0]; 32]
            })
        };
        let a = flex_tensor([2, 1, 3, 3], vec![1.0; 18]);
        assert!(!is_kept(f32s(&a), [2, 1]));
        for i in 0..4 {
            assert_eq!(get(&a, Transform::Small)[0], 1.0);
            // Kept from the second call on, under its own shape only.
            assert_eq!(is_kept(f32s(&a), [2, 1]), i >= 1, "after call {i}");
            assert!(!is_kept(f32s(&a), [1, 2]));
        }
        assert_eq!(get(&a, Transform::Large)[0], 1.0);
        assert_eq!(get(&a, Transform::Large)[0], 1.0);
        let mut values = vec![1.0; 18];
        values[0] = -0.0;
        let b = flex_tensor([2, 1, 3, 3], values);
        for _ in 0..3 {
            assert_eq!(get(&b, Transform::Small)[0].to_bits(), (-0.0f32).to_bits());
        }
        // a: seen, kept, reused twice, its large transform once; b: seen, kept, reused.
        assert_eq!(calls, 2 + 1 + 2);
    }

    /// A tensor transform comes back as the same bytes once its weights are kept (so that
    /// what is keyed on its address finds it again), and is computed afresh before.
    #[test]
    fn a_kept_tensor_transform_is_the_same_tensor() {
        let a = flex_tensor([3, 1, 3, 3], vec![2.0; 27]);
        let get = || {
            transformed_tensor(f32s(&a), &a, Transform::Phases, [3, 1], || {
                flex_tensor([4], vec![5.0; 4])
            })
        };
        let address = |t: &FlexTensor| f32s(t).as_ptr() as usize;
        let (first, second, third) = (get(), get(), get());
        assert_ne!(
            address(&first),
            address(&second),
            "computed at each of the first two"
        );
        assert_eq!(address(&second), address(&third), "kept at the second call");
        assert_eq!(f32s(&third), &[5.0; 4]);
    }

    #[test]
    fn checksums_see_every_word() {
        let w: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let base = checksum(&w);
        for i in 0..w.len() {
            let mut v = w.clone();
            v[i] = f32::from_bits(v[i].to_bits() ^ 1);
            assert_ne!(checksum(&v), base, "word {i}");
        }
        assert_ne!(checksum(&w[..36]), base);
        assert_ne!(checksum(&[0.0]), checksum(&[-0.0]));
    }
}
