//! Structs that grow by version: `struct_size` read, checked and written back.
//!
//! A versioned struct (`msclam_session_options`, `msclam_slide_result`, `msclam_model_info`)
//! starts with `uint32_t struct_size`: the number of bytes of it the caller knows. The library
//! reads or writes only the whole fields within it, so that programs built against an older,
//! shorter header keep working with a newer library and the other way round.

use crate::boundary::FfiError;

/// The smallest `struct_size` accepted: `struct_size` itself and the field after it.
pub(crate) const MIN_STRUCT_SIZE: usize = 8;

/// A `#[repr(C)]` struct that grows by version. Implement it with [`versioned!`], next to the
/// struct's definition.
///
/// # Safety
/// Implementors must be `#[repr(C)]` with `struct_size: u32` as their first field, every field
/// must accept any bytes (integers and floats only), and [`Versioned::whole_fields`] must
/// return the end offset of a field, or 0, and at most `size` and `size_of::<Self>()`.
pub(crate) unsafe trait Versioned: Copy {
    /// The largest prefix of the struct made of whole fields that fits in `size` bytes.
    fn whole_fields(&self, size: usize) -> usize;
    /// Sets the `struct_size` field.
    fn set_struct_size(&mut self, size: u32);
}

/// The largest prefix of a struct made of whole fields that fits in `size` bytes, given the
/// end offsets of its fields in order.
pub(crate) fn whole_fields(size: usize, field_ends: &[usize]) -> usize {
    field_ends
        .iter()
        .copied()
        .take_while(|end| *end <= size)
        .last()
        .unwrap_or(0)
}

/// Implements [`Versioned`] for a `#[repr(C)]` struct from the list of all its fields, in
/// declaration order, starting with `struct_size`.
macro_rules! versioned {
    ($ty:ty { struct_size, $($field:ident),+ $(,)? }) => {
        const _: () = assert!(
            std::mem::offset_of!($ty, struct_size) == 0,
            "struct_size is the first field"
        );
        // SAFETY: `struct_size` is the struct's first field (asserted above) and a `u32`
        // (`set_struct_size` assigns one to it); the field list is the struct's, in order, so
        // `whole_fields` returns a field's end (or 0) within `size` and the struct's size,
        // which ends the list (so that a caller's struct of the same size gets every byte,
        // tail padding included). The structs this is used for hold only integers and floats.
        unsafe impl $crate::versioned::Versioned for $ty {
            fn whole_fields(&self, size: usize) -> usize {
                $crate::versioned::whole_fields(
                    size,
                    &[
                        std::mem::offset_of!($ty, struct_size)
                            + std::mem::size_of_val(&self.struct_size),
                        $(std::mem::offset_of!($ty, $field) + std::mem::size_of_val(&self.$field),)+
                        std::mem::size_of::<$ty>(),
                    ],
                )
            }

            fn set_struct_size(&mut self, size: u32) {
                self.struct_size = size;
            }
        }
    };
}
pub(crate) use versioned;

/// Reads the `struct_size` of the caller's struct at `ptr` and checks that it holds at least
/// [`MIN_STRUCT_SIZE`] bytes (else `FfiError::Invalid(too_short)`). A NULL `ptr` is
/// `FfiError::Null(name)`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reading its first 4 bytes (`struct_size`; no alignment
/// needed).
pub(crate) unsafe fn read_struct_size<T: Versioned>(
    ptr: *const T,
    name: &'static str,
    too_short: &'static str,
) -> Result<usize, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::Null(name));
    }
    // SAFETY: `ptr` is non-NULL (checked above) and this function's caller guarantees that its
    // first 4 bytes are readable; `struct_size` is a `u32` at offset 0 (`Versioned`), and the
    // read is unaligned.
    let size = unsafe { ptr.cast::<u32>().read_unaligned() } as usize;
    if size < MIN_STRUCT_SIZE {
        return Err(FfiError::Invalid(too_short));
    }
    Ok(size)
}

/// `defaults` with the whole fields of the caller's struct at `src` that fit in its `size`
/// bytes read over them (`struct_size` included, as the caller set it).
///
/// # Safety
/// `src` must be valid for reading `size` bytes (no alignment needed) and not overlap
/// `defaults`.
pub(crate) unsafe fn read_fields<T: Versioned>(src: *const T, size: usize, defaults: T) -> T {
    let mut value = defaults;
    let n = value.whole_fields(size);
    // SAFETY: `src` is readable for `size >= n` bytes (this function's caller guarantees it),
    // `value` is a local of `size_of::<T>() >= n` bytes, so they do not overlap, and any bytes
    // are a valid value for the fields of a `Versioned` struct; bytes are copied unaligned.
    unsafe {
        std::ptr::copy_nonoverlapping(src.cast::<u8>(), (&raw mut value).cast::<u8>(), n);
    }
    value
}

/// Writes the whole fields of `value` that fit in `size` bytes to the caller's struct at
/// `dst`, with `struct_size` set to the number of bytes written (the smaller of `size` and
/// `size_of::<T>()` when `size` ends on a field).
///
/// # Safety
/// `dst` must be valid for writing `size` bytes (no alignment needed).
pub(crate) unsafe fn write_fields<T: Versioned>(mut value: T, dst: *mut T, size: usize) {
    let n = value.whole_fields(size);
    value.set_struct_size(n as u32);
    // SAFETY: `dst` is writable for `size >= n` bytes (this function's caller guarantees it);
    // `value` is a local of `size_of::<T>() >= n` bytes, so they do not overlap; bytes are
    // copied unaligned.
    unsafe {
        std::ptr::copy_nonoverlapping((&raw const value).cast::<u8>(), dst.cast::<u8>(), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_fields_stop_before_a_field_cut_short() {
        let ends = [4, 8, 16, 24];
        assert_eq!(whole_fields(0, &ends), 0);
        assert_eq!(whole_fields(3, &ends), 0);
        assert_eq!(whole_fields(8, &ends), 8);
        assert_eq!(whole_fields(12, &ends), 8);
        assert_eq!(whole_fields(24, &ends), 24);
        assert_eq!(whole_fields(1000, &ends), 24);
    }
}
