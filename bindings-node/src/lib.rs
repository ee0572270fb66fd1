//! iris-rpc-node (work in progress).
