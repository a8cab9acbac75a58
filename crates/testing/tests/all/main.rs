//! Tests of the test servers and helpers themselves, each against the real
//! thing over loopback.

mod chaos;
mod echo;
mod grpc;
mod process;
mod tcp;
mod ws;
