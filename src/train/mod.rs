//! Training SDSeg and its autoencoder (see ARCHITECTURE.md).
