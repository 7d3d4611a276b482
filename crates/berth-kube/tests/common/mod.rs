#![allow(dead_code)]
pub mod k8s;
