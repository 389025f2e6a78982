//! Reading a libpq password file (`host:port:database:user:password`, `*` matching
//! anything, `\:` and `\\` escaped), because tokio-postgres does not read one itself.

/// The password for the first line matching the connection, as libpq picks it.
pub fn lookup(contents: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), database, user];
    contents
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .filter_map(split_fields)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.remove(4))
}

fn split_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::lookup;

    fn check(contents: &str, host: &str, user: &str, expected: Option<&str>) {
        assert_eq!(
            lookup(contents, host, 5432, "postgres", user).as_deref(),
            expected,
            "{contents:?} for {user}@{host}"
        );
    }

    #[test]
    fn matches_like_libpq() {
        let file = "# comment\n127.0.0.1:5432:*:replicator:s3cret\n*:*:*:postgres:pa\\:ss\n";
        check(file, "127.0.0.1", "replicator", Some("s3cret"));
        check(file, "10.0.0.1", "replicator", None);
        check(file, "10.0.0.1", "postgres", Some("pa:ss"));
        check(file, "10.0.0.1", "nobody", None);
        check("*:*:*:*:a:b", "h", "u", Some("a:b"));
        check("*:*:*:u", "h", "u", None);
    }
}
