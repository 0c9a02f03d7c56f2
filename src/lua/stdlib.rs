//! The Lua modules shipped inside the binary (`stdlib/*.lua`), found by `require` after the
//! recipe's own directory and listed by `ftl ls`.

/// (module name, source) for every file in `stdlib/`; a test checks this covers the directory.
pub const STDLIB: &[(&str, &str)] = &[
    ("check", include_str!("../../stdlib/check.lua")),
    ("compare", include_str!("../../stdlib/compare.lua")),
    ("presets", include_str!("../../stdlib/presets.lua")),
    ("report", include_str!("../../stdlib/report.lua")),
    ("schedule", include_str!("../../stdlib/schedule.lua")),
];
