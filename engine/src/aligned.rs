//! Owned buffers that start on a cache line: the weights the kernels stream (a tile or vector
//! load that straddles two lines costs two; the AMX kernels ran 1.5x faster on aligned weights).

use std::marker::PhantomData;

/// 64 bytes with 64-byte alignment: the unit of owned, aligned storage.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Block64(pub(crate) [u8; 64]);

/// Bytes of one cache line: the alignment of [`Aligned`] buffers.
pub(crate) const LINE_BYTES: usize = 64;

/// An immutable slice of `T` whose first element is 64-byte aligned.
pub(crate) struct Aligned<T: bytemuck::Pod> {
    blocks: Vec<Block64>,
    len: usize,
    kind: PhantomData<T>,
}

impl<T: bytemuck::Pod> Aligned<T> {
    /// A 64-byte-aligned copy of `values`.
    pub(crate) fn copy_of(values: &[T]) -> Aligned<T> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mut blocks = vec![Block64([0; 64]); bytes.len().div_ceil(LINE_BYTES)];
        bytemuck::cast_slice_mut::<Block64, u8>(&mut blocks)[..bytes.len()].copy_from_slice(bytes);
        Aligned {
            blocks,
            len: values.len(),
            kind: PhantomData,
        }
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let bytes = bytemuck::cast_slice::<Block64, u8>(&self.blocks);
        bytemuck::cast_slice(&bytes[..self.len * std::mem::size_of::<T>()])
    }
}

/// Appends zeros to `v` until its length is a whole number of cache lines of `T`, so that what
/// is appended next starts on a line when `v` is copied into an [`Aligned`].
pub(crate) fn pad_to_line<T: bytemuck::Pod>(v: &mut Vec<T>) {
    let per_line = (LINE_BYTES / std::mem::size_of::<T>()).max(1);
    v.resize(v.len().next_multiple_of(per_line), T::zeroed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_start_on_a_line_and_keep_their_values() {
        for n in [0usize, 1, 15, 16, 17, 1000] {
            let v: Vec<u32> = (0..n as u32).collect();
            let a = Aligned::copy_of(&v);
            assert_eq!(&a[..], &v[..]);
            assert!((a.as_ptr() as usize).is_multiple_of(LINE_BYTES));
        }
        let mut v = vec![1u16; 5];
        pad_to_line(&mut v);
        assert_eq!(v.len(), 32);
        assert_eq!(&v[5..], &[0u16; 27][..]);
    }
}
