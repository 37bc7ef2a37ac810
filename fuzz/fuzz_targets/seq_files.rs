//! Fuzzes the other sequence readers — long-form CSV (classes and values), series CSV for
//! forecasting, `.npz` and `.npy` — any bytes must parse to a consistent dataset or give a
//! one-line error, never a panic, a hang or an allocation sized by a declared shape alone.
#![no_main]

use bptt::seq::{Labels, csv, forecast, npy};
use libfuzzer_sys::fuzz_target;

fn check(d: &bptt::seq::Dataset) {
    assert_eq!(d.values.len(), d.lengths.iter().sum::<usize>() * d.features);
    assert!(d.lengths.iter().all(|&l| l > 0));
    match &d.labels {
        Labels::Classes { names, ids } => assert!(ids.len() == d.len() && ids.iter().all(|&i| i < names.len())),
        Labels::Values(v) => assert!(v.len() % d.len().max(1) == 0),
        Labels::Steps { names, ids } => {
            assert!(ids.len() == d.lengths.iter().sum::<usize>() && ids.iter().all(|&i| i < names.len()))
        }
        Labels::None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for values in [false, true] {
        match csv::parse(&text, &csv::Columns { values, ..Default::default() }) {
            Ok(d) => check(&d),
            Err(e) => assert_eq!(e.to_string().lines().count(), 1, "{e}"),
        }
        for npz in [false, true] {
            match npy::parse(data, npz, values) {
                Ok(d) => check(&d),
                Err(e) => assert_eq!(e.to_string().lines().count(), 1, "{e}"),
            }
        }
    }
    match forecast::parse_series(&text) {
        Ok(s) => assert_eq!(s.values.len(), s.len() * s.names.len()),
        Err(e) => assert_eq!(e.to_string().lines().count(), 1, "{e}"),
    }
});
