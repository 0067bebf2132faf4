//! Turns mlx-c error reports into Rust strings for the calls made directly through mlx-sys.
//!
//! mlx-c reports a failed call by returning non-zero after calling one process-global error
//! handler. mlx-rs installs its own (once, on its first operation) and keeps the message in
//! a private thread-local. We install a handler that keeps a copy for us and then forwards
//! to mlx-rs's exported `default_mlx_error_handler`, so mlx-rs keeps its messages too.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Once;

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

extern "C" {
    /// mlx-rs 0.33's handler (`#[no_mangle]` in `mlx_rs::error`).
    fn default_mlx_error_handler(msg: *const c_char, data: *mut c_void);
}

extern "C" fn capture_then_forward(msg: *const c_char, data: *mut c_void) {
    if !msg.is_null() {
        // SAFETY: mlx-c passes a NUL-terminated message valid for this call.
        let text = unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned();
        LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(text));
    }
    // SAFETY: same arguments mlx-c gave us, to the handler mlx-rs would have received.
    unsafe { default_mlx_error_handler(msg, data) };
}

static INSTALL: Once = Once::new();

/// Installs the capturing handler after mlx-rs has installed its own (which it does once,
/// on its first operation; doing one here makes the order certain).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        let one = mlx_rs::Array::from_int(1);
        let _ = mlx_rs::ops::add(&one, &one);
        // SAFETY: a plain function pointer with no user data.
        unsafe {
            mlx_sys::mlx_set_error_handler(Some(capture_then_forward), std::ptr::null_mut(), None)
        };
    });
}

/// Runs one mlx-c call that returns a status; on failure returns MLX's message.
pub(crate) fn call(f: impl FnOnce() -> i32) -> Result<(), String> {
    install();
    LAST_ERROR.with(|slot| slot.borrow_mut().take());
    let status = f();
    let message = LAST_ERROR.with(|slot| slot.borrow_mut().take());
    if status == 0 {
        return Ok(());
    }
    Err(message.unwrap_or_else(|| format!("MLX call failed with status {status}")))
}
