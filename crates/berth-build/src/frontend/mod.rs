//! Frontends read a build definition and (later) lower it into the build IR.
//!
//! Only the Dockerfile frontend exists so far. [`source`] is shared: every frontend
//! reports problems as a [`source::SourceError`] pointing into its file, so an Earthfile
//! error will read exactly like a Dockerfile one.

pub mod dockerfile;
pub mod source;
