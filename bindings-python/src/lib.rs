//! iris-rpc-python (work in progress).
