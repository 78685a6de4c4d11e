//! The pure-Rust `torch.save` and pickle reader (`msclam_data::torch_save`): any bytes, as a
//! `torch.save` archive (zip or legacy) and as a plain pickle; every array that comes back is
//! converted. Any error is fine, a panic, an overflow or a huge allocation is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msclam_data::torch_save::{parse_pickle, parse_torch_save, PyObject};

fn touch(object: &PyObject) {
    match object {
        PyObject::Array(a) => {
            let values = a.to_f32();
            assert_eq!(values.len(), a.len());
            assert_eq!(a.shape.iter().product::<usize>(), a.len());
            let _ = a.to_i64();
        }
        PyObject::List(items) | PyObject::Tuple(items) => items.iter().for_each(touch),
        PyObject::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
            touch(k);
            touch(v);
        }),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = parse_torch_save(data) {
        touch(&object);
    }
    if let Ok(object) = parse_pickle(data) {
        touch(&object);
    }
});
