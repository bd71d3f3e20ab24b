//! Image references: what parses reads back as itself.

use kiln_registry::Reference;

pub fn exercise(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    let Ok(reference) = Reference::parse(text) else {
        return 0;
    };
    let shown = reference.to_string();
    let again = Reference::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parsed, but not as it is shown, {shown:?}: {e}"));
    assert_eq!(again, reference, "{text:?} shown as {shown:?}");
    let familiar = reference.familiar();
    let from_familiar = Reference::parse(&familiar)
        .unwrap_or_else(|e| panic!("{text:?} parsed, but not its short form {familiar:?}: {e}"));
    assert_eq!(
        from_familiar, reference,
        "{text:?} shortened to {familiar:?}"
    );
    1
}
