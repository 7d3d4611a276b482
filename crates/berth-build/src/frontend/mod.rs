//! Frontends read a build definition and (later) lower it into the build IR.
//!
//! Two frontends, Dockerfiles and Earthfiles, lower into the same IR. [`source`] is shared: every frontend
//! reports problems as a [`source::SourceError`] pointing into its file, so an Earthfile
//! error will read exactly like a Dockerfile one.

pub mod dockerfile;
pub mod earthfile;
pub mod source;
