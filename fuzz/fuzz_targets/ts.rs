//! Fuzzes the `.ts` reader: any text must parse to a dataset or give a one-line error naming
//! the line, never a panic or a hang; a dataset that parses must cut into padded batches.
#![no_main]

use bptt::seq::ts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match ts::parse(&text) {
        Ok(d) => {
            assert_eq!(d.values.len(), d.lengths.iter().sum::<usize>() * d.features);
            if d.len() < 64 && d.max_len() * d.features < 1 << 16 {
                let all: Vec<usize> = (0..d.len()).collect();
                let (x, lengths) = d.batch(&all);
                assert_eq!(x.len(), d.max_len() * d.len() * d.features);
                assert_eq!(lengths, d.lengths);
            }
        }
        Err(e) => assert_eq!(e.to_string().lines().count(), 1, "{e}"),
    }
});
