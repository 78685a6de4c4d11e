//! Tensors written by Python's `torch.save`, as CLAM stores features in `pt_files/`, read
//! through libtorch's own unpickler (`csrc/torch_load.cpp`): tch's `Tensor::load` reads only
//! the C++ API's format.

use std::path::Path;

use tch::{Kind, Tensor};

#[cfg(msclam_torch_load)]
mod native {
    use std::ffi::{c_char, c_void, CStr};

    extern "C" {
        pub fn msclam_torch_load_tensor(
            data: *const c_char,
            len: usize,
            error: *mut *mut c_char,
        ) -> *mut c_void;
        pub fn msclam_torch_free_error(error: *mut c_char);
    }

    /// Takes the message out of a C string from `msclam_torch_load_tensor` and frees it.
    pub fn take_message(error: *mut c_char) -> String {
        if error.is_null() {
            return "libtorch could not read the tensor".to_owned();
        }
        // SAFETY: `error` is a NUL-terminated string the shim allocated with malloc; it is
        // read once here and then released by the shim's own free function.
        unsafe {
            let message = CStr::from_ptr(error).to_string_lossy().into_owned();
            msclam_torch_free_error(error);
            message
        }
    }
}

/// Parses the bytes of a file written by Python's `torch.save(tensor, path)`.
pub fn tensor_from_torch_save(bytes: &[u8]) -> Result<Tensor, String> {
    #[cfg(msclam_torch_load)]
    {
        let mut error: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: `bytes` is valid for `bytes.len()` bytes during the call; the shim copies
        // it, never unwinds, and returns either null (with `error` set) or a new heap
        // `torch::Tensor*` whose ownership passes to us.
        let handle = unsafe {
            native::msclam_torch_load_tensor(bytes.as_ptr().cast(), bytes.len(), &mut error)
        };
        if handle.is_null() {
            return Err(native::take_message(error));
        }
        // SAFETY: a non-null handle is a `torch::Tensor*` created with `new`, which is exactly
        // what tch's `Tensor` owns and deletes on drop.
        Ok(unsafe { Tensor::from_ptr(handle.cast()) })
    }
    #[cfg(not(msclam_torch_load))]
    {
        let _ = bytes;
        Err("this build cannot read torch.save files (LIBTORCH was not set when building)".into())
    }
}

/// Reads an `N x D` feature tensor (float32, float16, bfloat16 or float64) from a
/// `torch.save` file as row-major f32, with D.
pub fn read_features(path: &Path) -> Result<(Vec<f32>, usize), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tensor = tensor_from_torch_save(&bytes)?;
    let size = tensor.size();
    if size.len() != 2 {
        return Err(format!("the tensor has shape {size:?}, expected N x D"));
    }
    match tensor.kind() {
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => {}
        other => {
            return Err(format!(
                "the tensor holds {other:?}, expected floating point"
            ))
        }
    }
    let (n, d) = (size[0] as usize, size[1] as usize);
    if n == 0 || d == 0 {
        return Ok((Vec::new(), d));
    }
    let flat = tensor
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1])
        .to_device(tch::Device::Cpu);
    let values = Vec::<f32>::try_from(&flat).map_err(|e| e.to_string())?;
    Ok((values, d))
}
