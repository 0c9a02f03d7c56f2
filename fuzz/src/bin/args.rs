//! `key=value` arguments of `ftl run`, `ftl check` and `ftl watch`: words split at NUL bytes,
//! parsed, their values read as Lua would see them.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let words: Vec<String> = data
            .split(|&b| b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        match ftl::lua::parse_args(&words) {
            Ok(pairs) => {
                for (_, v) in pairs {
                    let _ = ftl::lua::parse_value(&v);
                }
            }
            Err(e) => {
                if e.to_string().trim().is_empty() {
                    ftl_fuzz::fail("an empty error", "");
                }
            }
        }
    });
}
