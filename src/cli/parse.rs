//! Parsers for option values: each error names the forms velo accepts.

use crate::pgversion::MIN_MAJOR;

/// A PostgreSQL major version velo supports (`17`).
pub fn pg_major(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n >= MIN_MAJOR => Ok(n),
        Ok(_) => Err(format!(
            "velo needs PostgreSQL {MIN_MAJOR} or newer (older majors are past their end of life); give a major version number such as 17"
        )),
        Err(_) => Err(format!(
            "`{text}` is not a major version number: give one such as 17 ({MIN_MAJOR} or newer)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors() {
        assert_eq!(pg_major("17"), Ok(17));
        assert!(pg_major("13").unwrap_err().contains("14 or newer"));
        assert!(
            pg_major("fifteen")
                .unwrap_err()
                .contains("major version number")
        );
        assert!(pg_major("-1").is_err());
        assert!(pg_major("99999999999").is_err());
    }
}
