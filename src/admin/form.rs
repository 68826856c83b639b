//! The body of a submitted form (`application/x-www-form-urlencoded`), decoded.

/// Fields of a form, in the order sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Decode a form body: `name=value` pairs joined by `&`, `+` for a space, `%XX` for a
    /// byte; invalid UTF-8 and broken escapes are kept as text, never an error.
    pub fn parse(body: &[u8]) -> Form {
        let fields = body
            .split(|&b| b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let mut halves = pair.splitn(2, |&b| b == b'=');
                let name = decode(halves.next().unwrap_or_default());
                let value = decode(halves.next().unwrap_or_default());
                (name, value)
            })
            .collect();
        Form(fields)
    }

    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn decode(text: &[u8]) -> String {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match (text[i], hex(text.get(i + 1)), hex(text.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_as_browsers_encode_them() {
        let form = Form::parse(b"token=a%2Bb+c%3D%26&as=explode&as=pass&empty=&bare&bad=%zz%4&utf=%C3%A9");
        assert_eq!(form.get("token"), Some("a+b c=&"));
        assert_eq!(form.get("as"), Some("explode"));
        assert_eq!(form.get("empty"), Some(""));
        assert_eq!(form.get("bare"), Some(""));
        assert_eq!(form.get("bad"), Some("%zz%4"));
        assert_eq!(form.get("utf"), Some("é"));
        assert_eq!(form.get("missing"), None);
        assert_eq!(Form::parse(b""), Form::default());
    }
}
