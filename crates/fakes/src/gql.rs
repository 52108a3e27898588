//! Just enough of a GraphQL reader for the fake: the operation's first root field, its alias,
//! its arguments (input-object literals as runpod-python inlines them, or `$variables` as
//! runpodctl sends them) and the text of its selection set. No validation of types: a real
//! server would reject some documents this accepts, which no client under test relies on.

use serde_json::{Map, Number, Value};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RootField {
    pub name: String,
    /// The key the result goes under (the alias when there is one).
    pub response_key: String,
    pub args: Map<String, Value>,
    /// Everything after the arguments, for checks such as "does `myself` select `pods`".
    pub rest: String,
}

pub(crate) fn parse_root(query: &str, variables: &Map<String, Value>) -> Result<RootField, String> {
    let mut p = Parser {
        s: query.as_bytes(),
        i: 0,
        variables,
    };
    p.skip_ignored();
    if p.peek_name_is("query") || p.peek_name_is("mutation") {
        p.name()?;
        p.skip_ignored();
        if p.peek().is_some_and(is_name_start) {
            p.name()?;
            p.skip_ignored();
        }
        if p.peek() == Some(b'(') {
            p.skip_balanced(b'(', b')')?;
            p.skip_ignored();
        }
    }
    p.expect(b'{')?;
    p.skip_ignored();
    let mut name = p.name()?;
    let mut response_key = name.clone();
    p.skip_ignored();
    if p.peek() == Some(b':') {
        p.i += 1;
        p.skip_ignored();
        name = p.name()?;
        p.skip_ignored();
    }
    let mut args = Map::new();
    if p.peek() == Some(b'(') {
        p.i += 1;
        loop {
            p.skip_ignored();
            if p.peek() == Some(b')') {
                p.i += 1;
                break;
            }
            let key = p.name()?;
            p.skip_ignored();
            p.expect(b':')?;
            let value = p.value()?;
            args.insert(key, value);
        }
    }
    if response_key.is_empty() {
        response_key = name.clone();
    }
    let rest = String::from_utf8_lossy(&p.s[p.i..]).into_owned();
    Ok(RootField {
        name,
        response_key,
        args,
        rest,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    variables: &'a Map<String, Value>,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err(&self, what: &str) -> String {
        format!("Syntax Error: {what} at offset {}", self.i)
    }

    /// Whitespace, commas (insignificant in GraphQL) and `#` comments.
    fn skip_ignored(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.i += 1,
                b'#' => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), String> {
        self.skip_ignored();
        if self.peek() == Some(want) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", want as char)))
        }
    }

    fn peek_name_is(&self, word: &str) -> bool {
        let end = self.i + word.len();
        self.s.get(self.i..end) == Some(word.as_bytes())
            && !self.s.get(end).copied().is_some_and(is_name_char)
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.i;
        if !self.peek().is_some_and(is_name_start) {
            return Err(self.err("expected a name"));
        }
        while self.peek().is_some_and(is_name_char) {
            self.i += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn skip_balanced(&mut self, open: u8, close: u8) -> Result<(), String> {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            if b == b'"' {
                self.string()?;
                continue;
            }
            self.i += 1;
            if b == open {
                depth += 1;
            } else if b == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
        }
        Err(self.err("unbalanced brackets"))
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ignored();
        match self.peek() {
            Some(b'$') => {
                self.i += 1;
                let name = self.name()?;
                Ok(self.variables.get(&name).cloned().unwrap_or(Value::Null))
            }
            Some(b'"') => self.string().map(Value::String),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ignored();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Value::Array(items));
                    }
                    if self.peek().is_none() {
                        return Err(self.err("unterminated list"));
                    }
                    items.push(self.value()?);
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut object = Map::new();
                loop {
                    self.skip_ignored();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Value::Object(object));
                    }
                    let key = self.name()?;
                    self.expect(b':')?;
                    let value = self.value()?;
                    object.insert(key, value);
                }
            }
            Some(b) if b == b'-' || b.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|b| {
                    b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')
                }) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| self.err("bad number"))?;
                let number: Number =
                    serde_json::from_str(text).map_err(|_| self.err("bad number"))?;
                Ok(Value::Number(number))
            }
            Some(b) if is_name_start(b) => {
                let name = self.name()?;
                Ok(match name.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" => Value::Null,
                    // An enum value (`cloudType: ALL`) reads as its name.
                    _ => Value::String(name),
                })
            }
            _ => Err(self.err("expected a value")),
        }
    }

    /// A `"…"` string with JSON-style escapes (GraphQL's are the same set). Block strings
    /// (`"""…"""`) are not supported.
    fn string(&mut self) -> Result<String, String> {
        let start = self.i;
        self.i += 1;
        while let Some(b) = self.peek() {
            match b {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    let text = std::str::from_utf8(&self.s[start..self.i])
                        .map_err(|_| self.err("bad string"))?;
                    return serde_json::from_str(text).map_err(|_| self.err("bad string"));
                }
                b'\n' => return Err(self.err("unterminated string")),
                _ => self.i += 1,
            }
        }
        Err(self.err("unterminated string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_vars() -> Map<String, Value> {
        Map::new()
    }

    #[test]
    fn reads_runpod_python_inline_deploy() {
        let q = r#"mutation { podFindAndDeployOnDemand(input: { cloudType: ALL, gpuCount: 1, volumeInGb: 40, containerDiskInGb: 40,
  gpuTypeId: "NVIDIA RTX A6000", name: "trainer", imageName: "runpod/pytorch", ports: "8888/http",
  volumeMountPath: "/workspace", env: [{ key: "JUPYTER_PASSWORD", value: "p\"w" }], minDownload: 1.5, supportPublicIp: true })
  { id imageName env machineId machine { podHostId } } }"#;
        let root = parse_root(q, &no_vars()).unwrap();
        assert_eq!(root.name, "podFindAndDeployOnDemand");
        let input = &root.args["input"];
        assert_eq!(input["cloudType"], "ALL");
        assert_eq!(input["gpuCount"], 1);
        assert_eq!(input["gpuTypeId"], "NVIDIA RTX A6000");
        assert_eq!(
            input["env"],
            json!([{"key": "JUPYTER_PASSWORD", "value": "p\"w"}])
        );
        assert_eq!(input["minDownload"], 1.5);
        assert_eq!(input["supportPublicIp"], true);
        assert!(root.rest.contains("machineId"));
    }

    #[test]
    fn resolves_variables_and_skips_definitions() {
        let vars = json!({"input": {"podId": "abc"}})
            .as_object()
            .unwrap()
            .clone();
        let q = "mutation TerminatePod($input: PodTerminateInput!) { podTerminate(input: $input) }";
        let root = parse_root(q, &vars).unwrap();
        assert_eq!(root.name, "podTerminate");
        assert_eq!(root.args["input"], json!({"podId": "abc"}));
        let q = "query Pod($id: String!) { p: pod(input: {podId: $id}) { id } }";
        let vars = json!({"id": "xyz"}).as_object().unwrap().clone();
        let root = parse_root(q, &vars).unwrap();
        assert_eq!(
            (root.name.as_str(), root.response_key.as_str()),
            ("pod", "p")
        );
        assert_eq!(root.args["input"]["podId"], "xyz");
    }

    #[test]
    fn reads_shorthand_query_and_rejects_garbage() {
        let root = parse_root("# list\n{ myself { pods { id } } }", &no_vars()).unwrap();
        assert_eq!(root.name, "myself");
        assert!(root.rest.contains("pods"));
        assert!(parse_root("mutation { podTerminate(input: {podId: \"x) }", &no_vars()).is_err());
        assert!(parse_root("nonsense", &no_vars()).is_err());
        assert!(parse_root("{ pod(input: {podId: }) { id } }", &no_vars()).is_err());
    }
}
