//! Replays every input of the committed fuzz corpus (`fuzz/corpus/TARGET/`) through its
//! target's check, on the stable toolchain: what fuzzing once found stays fixed.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut replayed = 0;
    for target in fuzz_checks::TARGETS {
        let dir = corpus.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}: every target keeps a corpus", dir.display()));
        let mut inputs = 0;
        for entry in entries {
            let path = entry.expect("an entry").path();
            let data = std::fs::read(&path).expect("an input");
            fuzz_checks::run(target, &data);
            inputs += 1;
        }
        assert!(inputs > 0, "{target}: an empty corpus");
        replayed += inputs;
    }
    eprintln!("{replayed} corpus inputs replayed");
}
