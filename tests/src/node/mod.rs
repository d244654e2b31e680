//! The real node (containerd, kubelet, ...). This file belongs to the node helper's branch;
//! here only the images module is declared.
pub mod images;
