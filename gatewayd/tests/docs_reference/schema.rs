//! The keys a file type accepts, read from the Rust source of its serde structs (syn), so that the check needs nothing
//! from the types themselves.
//!
//! Every `.rs` file under a `src/` folder of the repository is read; the structs that derive `Deserialize` and have
//! named fields are tables. From a root struct, each field is a key (its serde name: `rename`, `rename_all`); a field
//! whose type (under `Option`, `Vec`, `Box`) is another such struct is a table (`Vec`: an array of tables, written
//! `name[]` in key paths), any other field is a leaf. A type name defined several times (structs, enums, type aliases)
//! is resolved to the definition in the same file, else in the same crate; if that still leaves several and one of them
//! is a table, the check fails and says so. Serde features the check does not model (`flatten`, `alias`, maps) fail it
//! too, rather than be read wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use syn::punctuated::Punctuated;
use syn::{Expr, Fields, GenericArgument, Item, Lit, Meta, PathArguments, Token, Type};

/// A key of the file: its path (`api.tls.cert`, `device[].port`, `api.client_cert` for the array itself).
#[derive(Clone, Debug)]
pub struct Key {
    pub path: String,
    /// A table or an array of tables (the rest are leaves).
    pub table: bool,
    /// The Rust type's last path segment (`PathBuf`, `String`, `HumanDuration`, …); for tables the struct name.
    pub type_name: String,
    /// The field is an `Option`.
    pub optional: bool,
    /// serde fills the field in when it is missing (`#[serde(default)]` on the field).
    pub serde_default: bool,
}

#[derive(Clone)]
struct Field {
    name: String,
    ty: Type,
    serde_default: bool,
    /// A serde feature the check does not model (`flatten`, `alias`): an error if the field is reached.
    unmodelled: Option<String>,
}

/// A type defined in the sources: a table (a `Deserialize` struct with named fields) or anything else (an enum, a
/// tuple struct, a struct deserialized from another type, a type alias: a value).
#[derive(Clone)]
struct Def {
    file: PathBuf,
    /// The keys of a table; `None` for a value.
    fields: Option<Vec<Field>>,
}

/// Every type defined under the `src/` folders of `repo`, by name.
pub struct Source {
    repo: PathBuf,
    defs: BTreeMap<String, Vec<Def>>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with("target") {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") && path.components().any(|c| c.as_os_str() == "src") {
            out.push(path);
        }
    }
}

/// The `serde(...)` attributes' items.
fn serde_metas(attrs: &[syn::Attribute]) -> Vec<Meta> {
    let mut out = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let metas = attr
            .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            .unwrap_or_else(|e| panic!("cannot read #[serde(…)]: {e}"));
        out.extend(metas);
    }
    out
}

fn string_value(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => Some(s.value()),
        _ => None,
    }
}

fn derives_deserialize(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().filter(|a| a.path().is_ident("derive")).any(|a| {
        a.parse_args_with(Punctuated::<syn::Path, Token![,]>::parse_terminated)
            .map(|paths| paths.iter().any(|p| p.segments.last().is_some_and(|s| s.ident == "Deserialize")))
            .unwrap_or(false)
    })
}

fn rename_all(style: &str, name: &str) -> String {
    match style {
        "snake_case" | "lowercase" => name.to_lowercase(),
        "kebab-case" => name.replace('_', "-"),
        "SCREAMING_SNAKE_CASE" | "UPPERCASE" => name.to_uppercase(),
        other => panic!("rename_all = \"{other}\" on a struct: not modelled by this check"),
    }
}

/// The keys of a struct that is a table.
fn read_struct(item: &syn::ItemStruct, file: &Path) -> Option<Vec<Field>> {
    if !derives_deserialize(&item.attrs) {
        return None;
    }
    let Fields::Named(named) = &item.fields else { return None };
    let mut style = None;
    for meta in serde_metas(&item.attrs) {
        let path = meta.path();
        if path.is_ident("transparent") || path.is_ident("from") || path.is_ident("try_from") {
            // Deserialized from another type: a value, not a table.
            return None;
        }
        if path.is_ident("rename_all") {
            if let Meta::NameValue(nv) = &meta {
                style = string_value(&nv.value);
            }
        }
    }
    let mut fields = Vec::new();
    for f in &named.named {
        let ident = f.ident.as_ref().map(|i| i.to_string().trim_start_matches("r#").to_owned()).unwrap_or_default();
        let mut name = match &style {
            Some(s) => rename_all(s, &ident),
            None => ident.clone(),
        };
        let mut serde_default = false;
        let mut skip = false;
        let mut unmodelled = None;
        for meta in serde_metas(&f.attrs) {
            let path = meta.path();
            if path.is_ident("rename") {
                match &meta {
                    Meta::NameValue(nv) => name = string_value(&nv.value).unwrap_or(name),
                    Meta::List(list) => {
                        let inner = list
                            .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                            .unwrap_or_else(|e| panic!("{}: rename(…) on {ident}: {e}", file.display()));
                        for m in inner {
                            if let (true, Meta::NameValue(nv)) = (m.path().is_ident("deserialize"), &m) {
                                name = string_value(&nv.value).unwrap_or(name.clone());
                            }
                        }
                    }
                    Meta::Path(_) => {}
                }
            } else if path.is_ident("default") {
                serde_default = true;
            } else if path.is_ident("skip") || path.is_ident("skip_deserializing") {
                skip = true;
            } else if path.is_ident("flatten") || path.is_ident("alias") {
                unmodelled = Some(format!(
                    "{}: field `{ident}` uses serde `{}`, which this check does not model",
                    file.display(),
                    path.get_ident().map(ToString::to_string).unwrap_or_default()
                ));
            }
        }
        if !skip {
            fields.push(Field { name, ty: f.ty.clone(), serde_default, unmodelled });
        }
    }
    Some(fields)
}

fn collect(items: &[Item], file: &Path, out: &mut BTreeMap<String, Vec<Def>>) {
    for item in items {
        let mut define = |name: String, fields: Option<Vec<Field>>| {
            out.entry(name).or_default().push(Def { file: file.to_owned(), fields });
        };
        match item {
            Item::Struct(s) => define(s.ident.to_string(), read_struct(s, file)),
            Item::Enum(e) => define(e.ident.to_string(), None),
            Item::Type(t) => define(t.ident.to_string(), None),
            Item::Mod(m) => {
                if let Some((_, items)) = &m.content {
                    collect(items, file, out);
                }
            }
            _ => {}
        }
    }
}

/// The type under `Option`, `Vec` and `Box`: (its last path segment, whether it was optional, whether an array).
fn unwrap_type(ty: &Type) -> (String, bool, bool) {
    let mut ty = ty.clone();
    let (mut optional, mut array) = (false, false);
    loop {
        let Type::Path(p) = &ty else { return (quote_type(&ty), optional, array) };
        let Some(last) = p.path.segments.last() else { return (String::new(), optional, array) };
        let name = last.ident.to_string();
        let inner = match &last.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
                GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            }),
            _ => None,
        };
        match (name.as_str(), inner) {
            ("Option", Some(t)) if !optional && !array => {
                optional = true;
                ty = t;
            }
            ("Vec", Some(t)) if !array => {
                array = true;
                ty = t;
            }
            ("Box", Some(t)) => ty = t,
            ("HashMap" | "BTreeMap" | "IndexMap", _) => panic!("a map-typed key is not modelled by this check"),
            _ => return (name, optional, array),
        }
    }
}

fn quote_type(ty: &Type) -> String {
    match ty {
        Type::Path(p) => p.path.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::"),
        _ => "?".into(),
    }
}

/// The crate folder of a source file (`gatewayd`, `drivers`, …): the component before `src`.
fn crate_of(repo: &Path, file: &Path) -> PathBuf {
    let rel = file.strip_prefix(repo).unwrap_or(file);
    let mut out = PathBuf::new();
    for c in rel.components() {
        if c.as_os_str() == "src" {
            break;
        }
        out.push(c);
    }
    out
}

impl Source {
    pub fn read(repo: &Path) -> Source {
        let mut files = Vec::new();
        rust_files(repo, &mut files);
        let mut defs = BTreeMap::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let Ok(parsed) = syn::parse_file(&text) else { continue };
            collect(&parsed.items, file, &mut defs);
        }
        Source { repo: repo.to_owned(), defs }
    }

    /// The table `name` as seen from `from` (a file): of the types with that name, the only one, else the one in that
    /// file, else the one in its crate. `None` when that is not a table (or no such type is defined here).
    fn resolve(&self, name: &str, from: Option<&Path>, hint: Option<&str>) -> Option<&[Field]> {
        let candidates = self.defs.get(name)?;
        let rel = |s: &Def| s.file.strip_prefix(&self.repo).unwrap_or(&s.file).to_string_lossy().into_owned();
        let narrowed: Vec<&Def> = match (from, hint) {
            _ if candidates.len() == 1 => candidates.iter().collect(),
            (_, Some(h)) => candidates.iter().filter(|s| rel(s).starts_with(h)).collect(),
            (Some(f), None) => {
                let same_file: Vec<&Def> = candidates.iter().filter(|s| s.file == f).collect();
                if same_file.is_empty() {
                    candidates.iter().filter(|s| crate_of(&self.repo, &s.file) == crate_of(&self.repo, f)).collect()
                } else {
                    same_file
                }
            }
            (None, None) => candidates.iter().collect(),
        };
        match narrowed[..] {
            [one] => one.fields.as_deref(),
            _ if narrowed.iter().all(|d| d.fields.is_none()) => None,
            _ => panic!(
                "the type `{name}` is defined in several files ({}); the check cannot tell which one the file type \
                 uses (rename one, or give a hint in tests/docs_reference/main.rs)",
                candidates.iter().map(rel).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Every key under the root struct `root`, whose file path (relative to the repository) starts with `hint`.
    pub fn keys(&self, root: &str, hint: &str) -> Vec<Key> {
        let start = self
            .resolve(root, None, Some(hint))
            .unwrap_or_else(|| panic!("no Deserialize struct `{root}` with named fields under {hint}"));
        let file = self.file_of(root, start);
        let mut out = Vec::new();
        self.walk(start, &file, "", &mut out, &mut vec![root.to_owned()]);
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    fn walk(&self, fields: &[Field], file: &Path, prefix: &str, out: &mut Vec<Key>, stack: &mut Vec<String>) {
        for f in fields {
            if let Some(problem) = &f.unmodelled {
                panic!("{problem}");
            }
            let (type_name, optional, array) = unwrap_type(&f.ty);
            let path = format!("{prefix}{}", f.name);
            match self.resolve(&type_name, Some(file), None) {
                Some(inner) if !stack.contains(&type_name) => {
                    out.push(Key {
                        path: path.clone(),
                        table: true,
                        type_name: type_name.clone(),
                        optional,
                        serde_default: f.serde_default,
                    });
                    let child = if array { format!("{path}[].") } else { format!("{path}.") };
                    let inner_file = self.file_of(&type_name, inner);
                    stack.push(type_name);
                    self.walk(inner, &inner_file, &child, out, stack);
                    stack.pop();
                }
                Some(_) => panic!("`{type_name}` contains itself: not modelled by this check"),
                None => out.push(Key { path, table: false, type_name, optional, serde_default: f.serde_default }),
            }
        }
    }

    /// The file that defines the table with these fields.
    fn file_of(&self, name: &str, fields: &[Field]) -> PathBuf {
        self.defs[name]
            .iter()
            .find(|d| d.fields.as_deref().is_some_and(|f| std::ptr::eq(f, fields)))
            .map(|d| d.file.clone())
            .unwrap_or_default()
    }
}

/// Every HTTP route an axum router in the sources serves: `(METHOD, path)` from `.route("/path", get(…).post(…))`.
pub fn routes(repo: &Path) -> Vec<(String, String)> {
    use syn::visit::Visit;

    /// The methods of a method router expression: `get(h)`, `get(h).post(h2)`, `axum::routing::post(h)`.
    fn methods(expr: &Expr, out: &mut Vec<String>) {
        const METHODS: [&str; 6] = ["get", "post", "put", "delete", "patch", "head"];
        match expr {
            Expr::Call(call) => {
                if let Expr::Path(p) = &*call.func {
                    if let Some(last) = p.path.segments.last().map(|s| s.ident.to_string()) {
                        if METHODS.contains(&last.as_str()) {
                            out.push(last.to_uppercase());
                        }
                    }
                }
            }
            Expr::MethodCall(call) => {
                let name = call.method.to_string();
                if METHODS.contains(&name.as_str()) {
                    out.push(name.to_uppercase());
                }
                methods(&call.receiver, out);
            }
            _ => {}
        }
    }

    struct Routes(Vec<(String, String)>);
    impl<'ast> Visit<'ast> for Routes {
        fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
            if call.method == "route" && call.args.len() == 2 {
                if let (Some(path), Some(router)) = (call.args.first().and_then(string_value), call.args.last()) {
                    let mut found = Vec::new();
                    methods(router, &mut found);
                    self.0.extend(found.into_iter().map(|m| (m, path.clone())));
                }
            }
            syn::visit::visit_expr_method_call(self, call);
        }
    }

    let mut files = Vec::new();
    rust_files(repo, &mut files);
    let mut routes = Routes(Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Ok(parsed) = syn::parse_file(&text) {
            routes.visit_file(&parsed);
        }
    }
    routes.0.sort();
    routes.0.dedup();
    routes.0
}
