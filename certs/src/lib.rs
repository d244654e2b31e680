//! Webhook certificates.
