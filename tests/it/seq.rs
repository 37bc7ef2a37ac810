//! Your own sequences: the `.ts` reader (a small file of every kind, every bad input as a
//! one-line error with its line number, JapaneseVowels when present) and padded batches.

use bptt::seq::{Labels, ts};

const SMALL: &str = "# a comment\n@problemName tiny\n@dimensions 2\n@equalLength false\n@classLabel true a b\n@data\n1,2,3:4,5,6:b\n0.5:-1:a\n\n7,8:9,10:b\n";

#[test]
fn a_small_ts_file_reads_as_written() {
    let d = ts::parse(SMALL).unwrap();
    assert_eq!((d.features, d.lengths.clone(), d.len(), d.max_len()), (2, vec![3, 1, 2], 3, 3));
    // Time-major within a sequence: step i holds both dimensions.
    assert_eq!(d.values, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0, 0.5, -1.0, 7.0, 9.0, 8.0, 10.0]);
    assert_eq!(d.sequence(2), &[7.0, 9.0, 8.0, 10.0]);
    assert_eq!(d.labels, Labels::Classes { names: vec!["a".into(), "b".into()], ids: vec![1, 0, 1] });
    // A padded batch: (T, B, F) with zeros after each end, and the lengths.
    let (x, lengths) = d.batch(&[1, 2]);
    assert_eq!(lengths, vec![1, 2]);
    assert_eq!(x, vec![0.5, -1.0, 7.0, 9.0, 0.0, 0.0, 8.0, 10.0]);
    // Regression targets and unlabelled data.
    let r = ts::parse("@dimensions 1\n@targetLabel true\n@data\n1,2:0.25\n3:-4\n").unwrap();
    assert_eq!(r.labels, Labels::Values(vec![0.25, -4.0]));
    let u = ts::parse("@data\n1,2\n3\n").unwrap();
    assert_eq!((u.features, u.labels.clone()), (1, Labels::None));
}

#[test]
fn bad_ts_files_are_one_line_errors_naming_the_line() {
    let head = "@dimensions 2\n@classLabel true a b\n@data\n";
    for (body, want) in [
        ("1,2:3,4:a\n1,?:3,4:b\n", "line 5: missing value at dimension 1 step 2"),
        ("1,2:3,x:a\n", "line 4: 'x' at dimension 2 step 2 is not a number"),
        ("1,2:a\n", "line 4: 1 dimensions, the file has 2"),
        ("1,2:3:a\n", "line 4: dimension 2 has 1 steps, dimension 1 has 2"),
        ("1,2:3,4:c\n", "line 4: label 'c' is not among @classLabel a b"),
        ("1,2:3,inf:a\n", "not finite"),
        ("", "no sequences after @data"),
    ] {
        let e = ts::parse(&format!("{head}{body}")).unwrap_err().to_string();
        assert!(e.contains(want), "{body:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    assert!(ts::parse("@dimensions 1\n1,2\n").unwrap_err().to_string().contains("line 2: data before the @data line"));
    assert!(ts::parse("# only a comment\n").unwrap_err().to_string().contains("no @data line"));
    assert!(
        ts::parse("@dimensions zero\n@data\n").unwrap_err().to_string().contains("@dimensions needs a whole number")
    );
    // Through the file reader: the path is named, devices are refused.
    let e = ts::read(std::path::Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn japanese_vowels_reads_as_described() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/JapaneseVowels");
    let train = ts::read(&dir.join("JapaneseVowels_TRAIN.ts")).unwrap();
    let test = ts::read(&dir.join("JapaneseVowels_TEST.ts")).unwrap();
    for (d, n) in [(&train, 270), (&test, 370)] {
        assert_eq!((d.len(), d.features), (n, 12));
        assert!(d.lengths.iter().all(|&t| (7..=29).contains(&t)), "{:?}", d.lengths);
        let Labels::Classes { names, ids } = &d.labels else { panic!("no classes") };
        assert_eq!(names.len(), 9);
        assert_eq!(ids.len(), n);
    }
    let Labels::Classes { ids, .. } = &train.labels else { unreachable!() };
    for c in 0..9 {
        assert_eq!(ids.iter().filter(|&&i| i == c).count(), 30, "class {c}: 30 training utterances per speaker");
    }
    assert_eq!(train.values.len(), train.lengths.iter().sum::<usize>() * 12);
}
