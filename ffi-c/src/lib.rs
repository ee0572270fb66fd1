//! iris-rpc-ffi (work in progress).
