//! The API's request bodies: the input is a JSON body, deserialised as every request type
//! (`crates/control/src/requests.rs`). A body one accepts must serialise and deserialise again
//! to the same value.
#![no_main]

use ferry_control::requests::*;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    body::<CreateGroup>(data);
    body::<SubnetSpec>(data);
    body::<CreateNetwork>(data);
    body::<CreateStorage>(data);
    body::<CreateAvailabilitySet>(data);
    body::<DiskRequest>(data);
    body::<CreateVm>(data);
    body::<CreatePolicy>(data);
    body::<EnableReplication>(data);
});

fn body<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let value = serde_json::to_value(&request).expect("an accepted body serialises");
    let again: T = serde_json::from_value(value.clone()).expect("its value deserialises");
    assert_eq!(serde_json::to_value(&again).expect("serialises"), value);
}
