//! The HTTP route table of the JSON edge, read from the `google.api.http`
//! options of the embedded descriptors, and the binding of path and query
//! parameters onto request messages.
//!
//! Routes are never written by hand: every RPC that carries a
//! `google.api.http` rule gets one route per binding (its
//! `additional_bindings` included). The table refuses, when it is built, any
//! rule the edge could not serve unambiguously: a malformed template, a
//! variable bound to a field that does not exist or is not a scalar, two
//! routes with the same method and path shape, a body field that does not
//! exist, a `GET` with a body. It deliberately does not transcode bodies nor
//! check policies; the edge does both with what a [`Route`] carries.
//!
//! Matching is strict by default: literal segments compare byte for byte
//! (no decoding), a `*` variable matches exactly one non-empty segment, empty
//! segments (`//`, a trailing `/`), dot segments (`.`, `..`, also when
//! percent-encoded), malformed escapes, control characters and overlong paths
//! match nothing, and a variable never swallows the `:verb` of the last
//! segment.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, ReflectMessage as _, Value,
};
use soma_proto::google::api::HttpRule;
use soma_proto::google::api::http_rule::Pattern;
use soma_proto::{PolicyError, PolicyTable, PolicyView};

/// Full name of the HTTP rule extension.
const HTTP_EXTENSION: &str = "google.api.http";

/// Longest request path [`RouteTable::find`] looks at, in bytes.
pub const MAX_PATH_BYTES: usize = 2048;

/// Most segments a request path may have.
pub const MAX_PATH_SEGMENTS: usize = 64;

/// Most parameters [`parse_query`] accepts (a repeated key counts each time).
pub const MAX_QUERY_PARAMS: usize = 128;

/// Why the route table could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The descriptor set or the policies did not load.
    #[error("descriptors: {0}")]
    Descriptors(#[source] PolicyError),
    /// The `google.api.http` extension is missing from the descriptor set.
    #[error("descriptor set has no {HTTP_EXTENSION} extension")]
    MissingExtension,
    /// A named service is not in the descriptor set.
    #[error("unknown service {0}")]
    UnknownService(String),
    /// An HTTP rule did not decode or names no pattern.
    #[error("http rule of {method} is invalid: {reason}")]
    BadRule {
        /// The method (`/package.Service/Method`).
        method: String,
        /// What is wrong.
        reason: String,
    },
    /// A path template does not follow the `google.api.http` grammar.
    #[error("template {template:?} of {method} is malformed: {reason}")]
    BadTemplate {
        /// The method.
        method: String,
        /// The template.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// A template variable names a field that does not exist.
    #[error("template of {method} binds unknown field {field:?}")]
    UnknownPathField {
        /// The method.
        method: String,
        /// The field path.
        field: String,
    },
    /// A template variable names a message, repeated or map field.
    #[error("template of {method} binds non-scalar field {field:?}")]
    NonScalarPathField {
        /// The method.
        method: String,
        /// The field path.
        field: String,
    },
    /// The body names a field that does not exist.
    #[error("body of {method} names unknown field {field:?}")]
    UnknownBodyField {
        /// The method.
        method: String,
        /// The field.
        field: String,
    },
    /// A `GET` route declares a body.
    #[error("{method} is a GET route with a body")]
    BodyOnGet {
        /// The method.
        method: String,
    },
    /// A client-streaming method has an HTTP rule; the edge cannot serve it.
    #[error("{method} is client-streaming and cannot have an http route")]
    ClientStreaming {
        /// The method.
        method: String,
    },
    /// Two routes have the same HTTP method and path shape.
    #[error("route {route} of {method} collides with the route of {other}")]
    Collision {
        /// The method declared second.
        method: String,
        /// The method declared first.
        other: String,
        /// `VERB /template` of the route declared second.
        route: String,
    },
}

/// A parameter that could not be bound or parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("parameter {field:?}: {reason}")]
pub struct BindError {
    /// The field path or query key, as the client wrote it.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl BindError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One HTTP binding of one RPC.
#[derive(Clone, Debug)]
pub struct Route {
    /// The RPC.
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    /// Full name of the service, e.g. `somastack.v1.Analytics`.
    pub service: String,
    /// The HTTP method.
    pub http_method: http::Method,
    /// The path template as written in the proto.
    pub template: String,
    /// Where the request body goes.
    pub body: RouteBody,
    /// Field paths bound by the template (dotted for nested fields), in
    /// template order.
    pub path_fields: Vec<String>,
    /// Whether the RPC streams its response.
    pub server_streaming: bool,
    /// The method's policy; `None` means deny.
    pub policy: Option<PolicyView>,
}

/// Where an HTTP request body goes in the request message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteBody {
    /// No body: every field not bound by the path comes from the query.
    None,
    /// `body: "*"`: the body is the whole request message; no query.
    Whole,
    /// `body: "field"`: the body is that top-level field.
    Field(String),
}

/// The outcome of [`RouteTable::find`].
#[derive(Debug)]
pub enum RouteMatch<'a> {
    /// A route serves this method and path.
    Found {
        /// The route.
        route: &'a Route,
        /// `(field path, percent-decoded value)` for each template variable.
        path_params: Vec<(String, String)>,
    },
    /// The path exists, but not for this method.
    MethodNotAllowed {
        /// The methods the path accepts, sorted, without duplicates.
        allowed: Vec<http::Method>,
    },
    /// No route has this path.
    NotFound,
}

/// Every HTTP route of some services, in precedence order.
#[derive(Debug)]
pub struct RouteTable {
    /// Sorted most literal first, so the first match is the winner.
    routes: Vec<Route>,
    /// `templates[i]` is the compiled template of `routes[i]`.
    templates: Vec<Template>,
    /// Index of the primary binding of each gRPC path.
    by_grpc_path: HashMap<String, usize>,
}

impl RouteTable {
    /// Routes of the named services (e.g. all four of
    /// [`soma_proto::SERVICE_NAMES`]), from the embedded descriptors.
    ///
    /// Methods without a `google.api.http` option are gRPC-only and get no
    /// route.
    pub fn from_descriptors(services: &[&str]) -> Result<Self, RouteError> {
        let pool = soma_proto::descriptor_pool().map_err(RouteError::Descriptors)?;
        let policies = PolicyTable::for_services(services).map_err(RouteError::Descriptors)?;
        let ext = pool
            .get_extension_by_name(HTTP_EXTENSION)
            .ok_or(RouteError::MissingExtension)?;
        let mut built: Vec<(Route, Template, bool)> = Vec::new();
        for name in services {
            let service = pool
                .get_service_by_name(name)
                .ok_or_else(|| RouteError::UnknownService((*name).to_owned()))?;
            for method in service.methods() {
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let options = method.options();
                if !options.has_extension(&ext) {
                    continue;
                }
                let bad_rule = |reason: String| RouteError::BadRule {
                    method: grpc_path.clone(),
                    reason,
                };
                let value = options.get_extension(&ext);
                let rule: HttpRule = value
                    .as_message()
                    .ok_or_else(|| bad_rule("not a message".to_owned()))?
                    .transcode_to()
                    .map_err(|e| bad_rule(e.to_string()))?;
                if method.is_client_streaming() {
                    return Err(RouteError::ClientStreaming { method: grpc_path });
                }
                let policy = policies.get(&grpc_path).cloned();
                let mut bindings = vec![(rule.pattern.clone(), rule.body.clone(), true)];
                for extra in &rule.additional_bindings {
                    if !extra.additional_bindings.is_empty() {
                        return Err(bad_rule("nested additional_bindings".to_owned()));
                    }
                    bindings.push((extra.pattern.clone(), extra.body.clone(), false));
                }
                for (pattern, body, primary) in bindings {
                    let (route, template) = build_route(&method, &grpc_path, pattern, &body, policy.clone())?;
                    built.push((route, template, primary));
                }
            }
        }
        Self::from_built(built)
    }

    /// The table of already built routes (each with its compiled template
    /// and whether it is its method's primary binding): collisions refused,
    /// then sorted by [`precedence`].
    fn from_built(mut built: Vec<(Route, Template, bool)>) -> Result<Self, RouteError> {
        check_collisions(&built)?;
        built.sort_by(|a, b| precedence(&a.1, &a.0, &b.1, &b.0));
        let mut routes = Vec::with_capacity(built.len());
        let mut templates = Vec::with_capacity(built.len());
        let mut by_grpc_path = HashMap::new();
        for (i, (route, template, primary)) in built.into_iter().enumerate() {
            if primary {
                by_grpc_path.insert(route.grpc_path.clone(), i);
            }
            routes.push(route);
            templates.push(template);
        }
        Ok(Self {
            routes,
            templates,
            by_grpc_path,
        })
    }

    /// The route serving `method` on `path` (the path without its query).
    ///
    /// When several routes match, the most literal one wins: segments are
    /// compared left to right (literal before `*` before `**`), then a route
    /// with a verb before one without. A `HEAD` request never matches a
    /// `GET` route implicitly.
    pub fn find(&self, method: &http::Method, path: &str) -> RouteMatch<'_> {
        let Some(request) = RequestPath::parse(path) else {
            return RouteMatch::NotFound;
        };
        let mut allowed: Vec<http::Method> = Vec::new();
        for (route, template) in self.routes.iter().zip(&self.templates) {
            if !template.matches(&request) {
                continue;
            }
            if route.http_method != *method {
                allowed.push(route.http_method.clone());
                continue;
            }
            return match template.capture(&request) {
                Some(path_params) => RouteMatch::Found { route, path_params },
                // A captured value that decodes to a dot segment is refused
                // rather than handed to a less literal route.
                None => RouteMatch::NotFound,
            };
        }
        if allowed.is_empty() {
            return RouteMatch::NotFound;
        }
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        RouteMatch::MethodNotAllowed { allowed }
    }

    /// Every route, in precedence order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The primary binding of a gRPC method (`/package.Service/Method`).
    pub fn by_grpc_path(&self, grpc_path: &str) -> Option<&Route> {
        self.by_grpc_path.get(grpc_path).map(|&i| &self.routes[i])
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn build_route(
    method: &MethodDescriptor,
    grpc_path: &str,
    pattern: Option<Pattern>,
    body: &str,
    policy: Option<PolicyView>,
) -> Result<(Route, Template), RouteError> {
    let bad_rule = |reason: &str| RouteError::BadRule {
        method: grpc_path.to_owned(),
        reason: reason.to_owned(),
    };
    let (http_method, template_text) = match pattern {
        Some(Pattern::Get(p)) => (http::Method::GET, p),
        Some(Pattern::Put(p)) => (http::Method::PUT, p),
        Some(Pattern::Post(p)) => (http::Method::POST, p),
        Some(Pattern::Delete(p)) => (http::Method::DELETE, p),
        Some(Pattern::Patch(p)) => (http::Method::PATCH, p),
        Some(Pattern::Custom(c)) => {
            let m = http::Method::from_bytes(c.kind.as_bytes())
                .map_err(|_| bad_rule("custom kind is not an http method"))?;
            (m, c.path)
        }
        None => return Err(bad_rule("no pattern")),
    };
    let template = Template::parse(&template_text).map_err(|reason| RouteError::BadTemplate {
        method: grpc_path.to_owned(),
        template: template_text.clone(),
        reason,
    })?;
    let input = method.input();
    let mut path_fields = Vec::with_capacity(template.variables.len());
    for var in &template.variables {
        match resolve_field_path(&input, &var.field) {
            None => {
                return Err(RouteError::UnknownPathField {
                    method: grpc_path.to_owned(),
                    field: var.field.clone(),
                });
            }
            Some(field) if !is_plain_scalar(&field) => {
                return Err(RouteError::NonScalarPathField {
                    method: grpc_path.to_owned(),
                    field: var.field.clone(),
                });
            }
            Some(_) => path_fields.push(var.field.clone()),
        }
    }
    let body = match body {
        "" => RouteBody::None,
        "*" => RouteBody::Whole,
        name => {
            if input.get_field_by_name(name).is_none() {
                return Err(RouteError::UnknownBodyField {
                    method: grpc_path.to_owned(),
                    field: name.to_owned(),
                });
            }
            RouteBody::Field(name.to_owned())
        }
    };
    if http_method == http::Method::GET && body != RouteBody::None {
        return Err(RouteError::BodyOnGet {
            method: grpc_path.to_owned(),
        });
    }
    let service = method.parent_service().full_name().to_owned();
    let route = Route {
        method: method.clone(),
        grpc_path: grpc_path.to_owned(),
        service,
        http_method,
        template: template_text,
        body,
        path_fields,
        server_streaming: method.is_server_streaming(),
        policy,
    };
    Ok((route, template))
}

/// Resolves a dotted path of proto field names through singular message
/// fields.
fn resolve_field_path(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current.get_field_by_name(part)?;
        if parts.peek().is_none() {
            return Some(field);
        }
        match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
            _ => return None,
        }
    }
    None
}

/// A singular field whose value is one scalar, string, bytes or enum.
fn is_plain_scalar(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && !matches!(field.kind(), Kind::Message(_))
}

fn check_collisions(built: &[(Route, Template, bool)]) -> Result<(), RouteError> {
    let mut seen: HashMap<(http::Method, Vec<Segment>, Option<String>), &Route> = HashMap::new();
    for (route, template, _) in built {
        let key = (
            route.http_method.clone(),
            template.segments.clone(),
            template.verb.clone(),
        );
        if let Some(other) = seen.get(&key) {
            return Err(RouteError::Collision {
                method: route.grpc_path.clone(),
                other: other.grpc_path.clone(),
                route: format!("{} {}", route.http_method, route.template),
            });
        }
        seen.insert(key, route);
    }
    Ok(())
}

/// Most literal first; fully deterministic (ties broken by template text,
/// then HTTP method).
fn precedence(ta: &Template, ra: &Route, tb: &Template, rb: &Route) -> Ordering {
    let rank = |t: &Template| t.segments.iter().map(Segment::rank).collect::<Vec<u8>>();
    rank(ta)
        .cmp(&rank(tb))
        .then_with(|| tb.verb.is_some().cmp(&ta.verb.is_some()))
        .then_with(|| ra.template.cmp(&rb.template))
        .then_with(|| ra.http_method.as_str().cmp(rb.http_method.as_str()))
}

/// One segment of a compiled template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    /// Matches exactly this raw text.
    Literal(String),
    /// `*`: one non-empty segment.
    Single,
    /// `**`: zero or more segments; only ever last.
    Multi,
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Self::Literal(_) => 0,
            Self::Single => 1,
            Self::Multi => 2,
        }
    }
}

/// A template variable: the field it binds and the segments it spans.
#[derive(Clone, Debug)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A compiled path template.
#[derive(Clone, Debug)]
struct Template {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

impl Template {
    /// Parses the `google.api.http` template grammar:
    ///
    /// ```text
    /// Template = "/" Segments [ Verb ] ;
    /// Segments = Segment { "/" Segment } ;
    /// Segment  = "*" | "**" | LITERAL | Variable ;
    /// Variable = "{" FieldPath [ "=" Segments ] "}" ;
    /// FieldPath = IDENT { "." IDENT } ;
    /// Verb     = ":" LITERAL ;
    /// ```
    ///
    /// `**` may only be the last segment, and variables do not nest.
    fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix('/').ok_or("does not start with '/'")?;
        // The verb is the first ':' outside braces: LITERAL never holds one.
        let mut depth = 0u32;
        let mut split = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ':' if depth == 0 => {
                    split = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let (path, verb) = match split {
            Some(i) => {
                let verb = &rest[i + 1..];
                if !is_literal(verb) {
                    return Err(format!("invalid verb {verb:?}"));
                }
                (&rest[..i], Some(verb.to_owned()))
            }
            None => (rest, None),
        };
        let mut parser = TemplateParser {
            text: path,
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.segments(true)?;
        if parser.pos != path.len() {
            return Err(format!("unexpected {:?}", &path[parser.pos..]));
        }
        let TemplateParser {
            segments, variables, ..
        } = parser;
        if let Some(i) = segments.iter().position(|s| *s == Segment::Multi)
            && i + 1 != segments.len()
        {
            return Err("'**' is not the last segment".to_owned());
        }
        let mut fields = HashSet::new();
        for v in &variables {
            if !fields.insert(v.field.as_str()) {
                return Err(format!("field {:?} bound twice", v.field));
            }
        }
        Ok(Self {
            segments,
            variables,
            verb,
        })
    }

    fn matches(&self, request: &RequestPath<'_>) -> bool {
        if self.verb.as_deref() != request.verb {
            return false;
        }
        let fixed = match self.segments.last() {
            Some(Segment::Multi) => {
                if request.segments.len() < self.segments.len() - 1 {
                    return false;
                }
                self.segments.len() - 1
            }
            _ => {
                if request.segments.len() != self.segments.len() {
                    return false;
                }
                self.segments.len()
            }
        };
        self.segments[..fixed]
            .iter()
            .zip(&request.segments)
            .all(|(t, r)| match t {
                Segment::Literal(l) => l == r,
                Segment::Single | Segment::Multi => true,
            })
    }

    /// The variables' decoded values; `None` if one holds a dot segment once
    /// decoded.
    fn capture(&self, request: &RequestPath<'_>) -> Option<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let single = var.end == var.start + 1 && self.segments[var.start] == Segment::Single;
            let end = if var.end == self.segments.len() && self.segments.last() == Some(&Segment::Multi) {
                request.segments.len()
            } else {
                var.end
            };
            let value = if single {
                // grpc-gateway decodes %2F inside a one-segment variable.
                percent_decode(request.segments[var.start], false, false)?
            } else {
                // Reserved expansion: '/' separates segments, %2F stays as is.
                let raw = request.segments[var.start..end].join("/");
                percent_decode(&raw, false, true)?
            };
            if value.split('/').any(|part| part == "." || part == "..") {
                return None;
            }
            out.push((var.field.clone(), value));
        }
        Some(out)
    }
}

struct TemplateParser<'a> {
    text: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl TemplateParser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    /// Parses `Segment { "/" Segment }`, stopping before '}' or at the end.
    fn segments(&mut self, allow_variables: bool) -> Result<(), String> {
        loop {
            self.segment(allow_variables)?;
            if self.rest().starts_with('/') {
                self.pos += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, allow_variables: bool) -> Result<(), String> {
        let rest = self.rest();
        if rest.starts_with('{') {
            if !allow_variables {
                return Err("nested variable".to_owned());
            }
            self.pos += 1;
            let end = self.rest().find(['=', '}']).ok_or("unterminated variable")?;
            let field = self.rest()[..end].to_owned();
            if field.is_empty() || !field.split('.').all(is_ident) {
                return Err(format!("invalid field path {field:?}"));
            }
            self.pos += end;
            let start = self.segments.len();
            if self.rest().starts_with('=') {
                self.pos += 1;
                self.segments(false)?;
            } else {
                self.segments.push(Segment::Single);
            }
            if !self.rest().starts_with('}') {
                return Err("unterminated variable".to_owned());
            }
            self.pos += 1;
            self.variables.push(Variable {
                field,
                start,
                end: self.segments.len(),
            });
            return Ok(());
        }
        let end = rest.find(['/', '}']).unwrap_or(rest.len());
        let token = &rest[..end];
        let segment = match token {
            "**" => Segment::Multi,
            "*" => Segment::Single,
            "" => return Err("empty segment".to_owned()),
            "." | ".." => return Err("dot segment".to_owned()),
            lit if is_literal(lit) => Segment::Literal(lit.to_owned()),
            lit => return Err(format!("invalid literal {lit:?}")),
        };
        self.segments.push(segment);
        self.pos += end;
        Ok(())
    }
}

/// Characters of a template literal or verb: RFC 3986 unreserved and the
/// sub-delimiters that need no escaping in a path, never '%', ':', '/',
/// braces or '*'.
fn is_literal(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b'@'
                )
        })
}

fn is_ident(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A request path split for matching: raw segments and the verb of the last
/// one.
struct RequestPath<'a> {
    segments: Vec<&'a str>,
    verb: Option<&'a str>,
}

impl<'a> RequestPath<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        if path.len() > MAX_PATH_BYTES {
            return None;
        }
        let rest = path.strip_prefix('/')?;
        let mut segments: Vec<&str> = rest.split('/').collect();
        if segments.len() > MAX_PATH_SEGMENTS {
            return None;
        }
        let mut verb = None;
        if let Some(last) = segments.last_mut()
            && let Some((head, v)) = last.rsplit_once(':')
        {
            if v.is_empty() {
                return None;
            }
            *last = head;
            verb = Some(v);
        }
        for segment in &segments {
            // Empty segments (`//`, a trailing '/') and dot segments, raw or
            // encoded, are refused outright: they are how paths are smuggled
            // past prefix checks.
            let decoded = percent_decode(segment, false, false)?;
            if decoded.is_empty() || decoded == "." || decoded == ".." {
                return None;
            }
        }
        Some(Self { segments, verb })
    }
}

/// Strict percent-decoding: a '%' not followed by two hex digits, invalid
/// UTF-8 or a control character is refused. `plus_as_space` applies the form
/// encoding; `keep_slash` leaves `%2F` encoded.
fn percent_decode(s: &str, plus_as_space: bool, keep_slash: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                let b = (hi << 4) | lo;
                if keep_slash && b == b'/' {
                    out.extend_from_slice(&bytes[i..i + 3]);
                } else {
                    out.push(b);
                }
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(text)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a query string (without the '?') into `(key, value)` pairs, in
/// order: '+' is a space, escapes are decoded strictly, invalid UTF-8 and
/// control characters are refused, as are empty keys and more than
/// [`MAX_QUERY_PARAMS`] parameters. A key without '=' has an empty value.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, BindError> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        if out.len() == MAX_QUERY_PARAMS {
            return Err(BindError::new(
                "",
                format!("more than {MAX_QUERY_PARAMS} query parameters"),
            ));
        }
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(raw_key, true, false)
            .ok_or_else(|| BindError::new(raw_key, "key is not valid percent-encoded UTF-8"))?;
        if key.is_empty() {
            return Err(BindError::new("", "empty query key"));
        }
        let value = percent_decode(raw_value, true, false)
            .ok_or_else(|| BindError::new(&key, "value is not valid percent-encoded UTF-8"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// Sets path and query parameters on a request message, each value read
/// with its proto3 JSON mapping.
///
/// Keys are dotted field paths; each part is the proto name or the JSON name
/// of a field, through singular message fields. Repeated scalar fields take
/// every value of a repeated key, in order. A non-repeated field may be set
/// once: a second parameter for it, or a value that differs from one
/// already in the message (e.g. from the body), is an error, as is setting
/// two members of one oneof. Pass path and query parameters in one call so
/// that a query cannot repeat a path field.
pub fn bind_params(message: &mut DynamicMessage, params: &[(String, String)]) -> Result<(), BindError> {
    let mut seen = HashSet::new();
    for (key, value) in params {
        bind_one(message, key, value, &mut seen)?;
    }
    Ok(())
}

fn bind_one(
    message: &mut DynamicMessage,
    key: &str,
    raw: &str,
    seen: &mut HashSet<String>,
) -> Result<(), BindError> {
    if key.is_empty() {
        return Err(BindError::new(key, "empty field path"));
    }
    let parts: Vec<&str> = key.split('.').collect();
    let mut canonical = Vec::with_capacity(parts.len());
    let mut current = message;
    for (i, part) in parts.iter().enumerate() {
        let desc = current.descriptor();
        let field = find_field(&desc, part).ok_or_else(|| BindError::new(key, "unknown field"))?;
        canonical.push(field.name().to_owned());
        let last = i + 1 == parts.len();
        if field.is_map() {
            return Err(BindError::new(key, "map fields cannot be set from parameters"));
        }
        if !last {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && well_known_leaf(&m).is_none() => {
                    check_oneof(current, &field, key)?;
                    // Inserts the default message when absent; `as_message_mut`
                    // cannot fail on a message-kind singular field.
                    current = current
                        .get_field_mut(&field)
                        .as_message_mut()
                        .ok_or_else(|| BindError::new(key, "not a message"))?;
                    continue;
                }
                _ => return Err(BindError::new(key, "not a path through a message field")),
            }
        }
        let value = parse_value(&field, raw).map_err(|reason| BindError::new(key, reason))?;
        if field.is_list() {
            current
                .get_field_mut(&field)
                .as_list_mut()
                .ok_or_else(|| BindError::new(key, "not a list"))?
                .push(value);
            return Ok(());
        }
        if !seen.insert(canonical.join(".")) {
            return Err(BindError::new(key, "set twice"));
        }
        check_oneof(current, &field, key)?;
        if current.has_field(&field) && *current.get_field(&field) != value {
            return Err(BindError::new(
                key,
                "conflicts with a value already in the request",
            ));
        }
        current
            .try_set_field(&field, value)
            .map_err(|e| BindError::new(key, e.to_string()))?;
        return Ok(());
    }
    Err(BindError::new(key, "empty field path"))
}

fn find_field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// Refuses setting a member of a oneof when another member is set.
fn check_oneof(message: &DynamicMessage, field: &FieldDescriptor, key: &str) -> Result<(), BindError> {
    if let Some(oneof) = field.containing_oneof() {
        let other = oneof
            .fields()
            .any(|f| f.number() != field.number() && message.has_field(&f));
        if other {
            return Err(BindError::new(key, "another member of its oneof is set"));
        }
    }
    Ok(())
}

/// A well-known message type whose JSON form is a string or a scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WellKnownLeaf {
    /// Timestamp, Duration, FieldMask: parsed from their JSON strings.
    JsonString,
    /// A wrapper: the JSON form of its `value` field.
    Wrapper,
}

fn well_known_leaf(message: &MessageDescriptor) -> Option<WellKnownLeaf> {
    match message.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask" => {
            Some(WellKnownLeaf::JsonString)
        }
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => Some(WellKnownLeaf::Wrapper),
        _ => None,
    }
}

/// Reads one value for a field (or one element of a repeated field).
fn parse_value(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    match field.kind() {
        Kind::Message(m) => match well_known_leaf(&m) {
            Some(WellKnownLeaf::JsonString) => {
                let parsed =
                    DynamicMessage::deserialize(m.clone(), serde_json::Value::String(raw.to_owned()))
                        .map_err(|e| format!("not a valid {}: {e}", m.full_name()))?;
                Ok(Value::Message(parsed))
            }
            Some(WellKnownLeaf::Wrapper) => {
                let inner = m
                    .get_field_by_name("value")
                    .ok_or_else(|| format!("{} has no value field", m.full_name()))?;
                let value = parse_scalar(&inner.kind(), raw)?;
                let mut wrapper = DynamicMessage::new(m);
                wrapper.try_set_field(&inner, value).map_err(|e| e.to_string())?;
                Ok(Value::Message(wrapper))
            }
            None => Err("message-typed fields cannot be set from parameters".to_owned()),
        },
        kind => parse_scalar(&kind, raw),
    }
}

/// Integers as written by proto3 JSON in a string: optional '-', digits.
fn parse_int<T: std::str::FromStr>(raw: &str, signed: bool) -> Result<T, String> {
    let digits = if signed {
        raw.strip_prefix('-').unwrap_or(raw)
    } else {
        raw
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{raw:?} is not a decimal integer"));
    }
    raw.parse().map_err(|_| format!("{raw:?} is out of range"))
}

fn parse_double(raw: &str) -> Result<f64, String> {
    match raw {
        "NaN" => return Ok(f64::NAN),
        "Infinity" => return Ok(f64::INFINITY),
        "-Infinity" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust also reads "inf" and "nan"; proto3 JSON spells them only as above.
    let numeric = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    let value: f64 =
        if numeric { raw.parse().ok() } else { None }.ok_or_else(|| format!("{raw:?} is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("{raw:?} is out of range"))
    }
}

/// Base64 with either alphabet, padded or not, as proto3 JSON accepts.
fn parse_bytes(raw: &str) -> Result<Vec<u8>, String> {
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    let engine = if raw.contains(['-', '_']) {
        url_safe
    } else {
        standard
    };
    engine.decode(raw).map_err(|_| format!("{raw:?} is not base64"))
}

fn parse_scalar(kind: &Kind, raw: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Double => Value::F64(parse_double(raw)?),
        Kind::Float => {
            let v = parse_double(raw)?;
            if v.is_finite() && v.abs() > f64::from(f32::MAX) {
                return Err(format!("{raw:?} is out of range"));
            }
            // In range (checked above), so the narrowing only rounds.
            Value::F32(v as f32)
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(parse_int(raw, true)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(parse_int(raw, true)?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(parse_int(raw, false)?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(parse_int(raw, false)?),
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{raw:?} is not true or false")),
        },
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bytes => Value::Bytes(parse_bytes(raw)?.into()),
        Kind::Enum(e) => {
            let value = match e.get_value_by_name(raw) {
                Some(v) => v,
                None => {
                    let number: i32 = parse_int(raw, true)
                        .map_err(|_| format!("{raw:?} is not a value of {}", e.full_name()))?;
                    e.get_value(number)
                        .ok_or_else(|| format!("{number} is not a value of {}", e.full_name()))?
                }
            };
            Value::EnumNumber(value.number())
        }
        Kind::Message(m) => return Err(format!("{} is not a scalar", m.full_name())),
    })
}

#[cfg(test)]
mod tests {
    use soma_proto::google::api::CustomHttpPattern;

    use super::*;

    fn method(service: &str, name: &str) -> MethodDescriptor {
        let pool = soma_proto::descriptor_pool().unwrap();
        pool.get_service_by_name(service)
            .unwrap()
            .methods()
            .find(|m| m.name() == name)
            .unwrap()
    }

    fn request(path: &str) -> RequestPath<'_> {
        RequestPath::parse(path).unwrap()
    }

    #[test]
    fn the_full_template_grammar_parses() {
        struct Case {
            template: &'static str,
            segments: Vec<Segment>,
            variables: Vec<(&'static str, usize, usize)>,
            verb: Option<&'static str>,
        }
        let lit = |s: &str| Segment::Literal(s.to_owned());
        let cases = [
            Case {
                template: "/v1/whoami",
                segments: vec![lit("v1"), lit("whoami")],
                variables: vec![],
                verb: None,
            },
            Case {
                template: "/v1/{name=shelves/*/books/*}",
                segments: vec![
                    lit("v1"),
                    lit("shelves"),
                    Segment::Single,
                    lit("books"),
                    Segment::Single,
                ],
                variables: vec![("name", 1, 5)],
                verb: None,
            },
            Case {
                template: "/v1/{a.b_c}/x:do-it",
                segments: vec![lit("v1"), Segment::Single, lit("x")],
                variables: vec![("a.b_c", 1, 2)],
                verb: Some("do-it"),
            },
            Case {
                template: "/v1/*/{path=**}:get",
                segments: vec![lit("v1"), Segment::Single, Segment::Multi],
                variables: vec![("path", 2, 3)],
                verb: Some("get"),
            },
            Case {
                template: "/**",
                segments: vec![Segment::Multi],
                variables: vec![],
                verb: None,
            },
        ];
        for c in cases {
            let t = Template::parse(c.template).unwrap_or_else(|e| panic!("{}: {e}", c.template));
            assert_eq!(t.segments, c.segments, "{}", c.template);
            let vars: Vec<(&str, usize, usize)> = t
                .variables
                .iter()
                .map(|v| (v.field.as_str(), v.start, v.end))
                .collect();
            assert_eq!(vars, c.variables, "{}", c.template);
            assert_eq!(t.verb.as_deref(), c.verb, "{}", c.template);
        }
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "",
            "v1/x",
            "/",
            "/v1/",
            "/v1//x",
            "/v1/{a",
            "/v1/{a}}",
            "/v1/{}",
            "/v1/{1a}",
            "/v1/{a..b}",
            "/v1/{a=}",
            "/v1/{a={b}}",
            "/v1/{a=x/{b}}",
            "/v1/**/x",
            "/v1/{a=**}/x",
            "/v1/{a}/{a}",
            "/v1/x:",
            "/v1/x:a/b",
            "/v1/x:a:b",
            "/v1/..",
            "/v1/.",
            "/v1/a%20b",
            "/v1/a b",
            "/v1/a*b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn multi_segment_variables_keep_encoded_slashes() {
        let t = Template::parse("/v1/{name=shelves/*/books/*}").unwrap();
        let r = request("/v1/shelves/s%201/books/b%2F2");
        assert!(t.matches(&r));
        assert_eq!(
            t.capture(&r).unwrap(),
            vec![("name".to_owned(), "shelves/s 1/books/b%2F2".to_owned())]
        );
        assert!(!t.matches(&request("/v1/shelves/s1/cases/b2")));
        assert!(!t.matches(&request("/v1/shelves/s1/books")));

        let deep = Template::parse("/v1/{path=**}").unwrap();
        let r = request("/v1/a/b/c");
        assert_eq!(
            deep.capture(&r).unwrap(),
            vec![("path".to_owned(), "a/b/c".to_owned())]
        );
        let r = request("/v1");
        assert!(deep.matches(&r));
        assert_eq!(
            deep.capture(&r).unwrap(),
            vec![("path".to_owned(), String::new())]
        );
        // A '**' never swallows the verb.
        let verb = Template::parse("/v1/{path=**}:get").unwrap();
        let r = request("/v1/a/b:get");
        assert!(verb.matches(&r));
        assert!(!deep.matches(&r));
        assert_eq!(
            verb.capture(&r).unwrap(),
            vec![("path".to_owned(), "a/b".to_owned())]
        );
    }

    #[test]
    fn rules_the_edge_cannot_serve_are_refused() {
        let get_sub = method("somastack.v1.CapsuleRepo", "GetSubmission");
        let list_sub = method("somastack.v1.CapsuleRepo", "ListSubmissions");
        let path = "/somastack.v1.CapsuleRepo/X";
        let get = |t: &str| Some(Pattern::Get(t.to_owned()));
        let post = |t: &str| Some(Pattern::Post(t.to_owned()));

        let err = build_route(&get_sub, path, get("/v1/x/{nope}"), "", None).unwrap_err();
        assert!(
            matches!(err, RouteError::UnknownPathField { ref field, .. } if field == "nope"),
            "{err}"
        );
        let err = build_route(&list_sub, path, get("/v1/x/{page}"), "", None).unwrap_err();
        assert!(
            matches!(err, RouteError::NonScalarPathField { ref field, .. } if field == "page"),
            "{err}"
        );
        let err = build_route(&list_sub, path, get("/v1/x/{page.nope}"), "", None).unwrap_err();
        assert!(matches!(err, RouteError::UnknownPathField { .. }), "{err}");
        let err = build_route(&list_sub, path, get("/v1/x/{state.x}"), "", None).unwrap_err();
        assert!(matches!(err, RouteError::UnknownPathField { .. }), "{err}");
        let err = build_route(&get_sub, path, get("/v1/x"), "*", None).unwrap_err();
        assert!(matches!(err, RouteError::BodyOnGet { .. }), "{err}");
        let err = build_route(&get_sub, path, post("/v1/x"), "nope", None).unwrap_err();
        assert!(
            matches!(err, RouteError::UnknownBodyField { ref field, .. } if field == "nope"),
            "{err}"
        );
        let err = build_route(&get_sub, path, get("/v1/x/{submission_id"), "", None).unwrap_err();
        assert!(matches!(err, RouteError::BadTemplate { .. }), "{err}");
        let err = build_route(&get_sub, path, None, "", None).unwrap_err();
        assert!(matches!(err, RouteError::BadRule { .. }), "{err}");
        let custom = Some(Pattern::Custom(CustomHttpPattern {
            kind: "NOT A METHOD".to_owned(),
            path: "/v1/x".to_owned(),
        }));
        let err = build_route(&get_sub, path, custom, "", None).unwrap_err();
        assert!(matches!(err, RouteError::BadRule { .. }), "{err}");
        assert!(
            err.to_string().contains(path),
            "the error names the method: {err}"
        );

        // What is valid: a nested scalar path field, a field body, a custom verb.
        let (route, _) = build_route(&list_sub, path, post("/v1/x/{page.page_token}"), "page", None).unwrap();
        assert_eq!(route.path_fields, vec!["page.page_token"]);
        assert_eq!(route.body, RouteBody::Field("page".to_owned()));
        let custom = Some(Pattern::Custom(CustomHttpPattern {
            kind: "OPTIONS".to_owned(),
            path: "/v1/x".to_owned(),
        }));
        let (route, _) = build_route(&get_sub, path, custom, "", None).unwrap();
        assert_eq!(route.http_method, http::Method::OPTIONS);
    }

    #[test]
    fn colliding_routes_are_refused_and_overlaps_ordered() {
        let get_sub = method("somastack.v1.CapsuleRepo", "GetSubmission");
        let history = method("somastack.v1.CapsuleRepo", "ListReviewHistory");
        let a = build_route(
            &get_sub,
            "/a/GetSubmission",
            Some(Pattern::Get("/v1/s/{submission_id}".to_owned())),
            "",
            None,
        )
        .unwrap();
        let b = build_route(
            &history,
            "/a/ListReviewHistory",
            Some(Pattern::Get("/v1/s/*".to_owned())),
            "",
            None,
        )
        .unwrap();
        let err = check_collisions(&[(a.0.clone(), a.1.clone(), true), (b.0, b.1, true)]).unwrap_err();
        assert!(
            matches!(err, RouteError::Collision { ref method, ref other, .. }
                if method == "/a/ListReviewHistory" && other == "/a/GetSubmission"),
            "{err}"
        );
        // Same shape, other method: no collision.
        let c = build_route(
            &history,
            "/a/ListReviewHistory",
            Some(Pattern::Delete("/v1/s/{submission_id}".to_owned())),
            "",
            None,
        )
        .unwrap();
        check_collisions(&[(a.0.clone(), a.1.clone(), true), (c.0, c.1, true)]).unwrap();
        // Overlapping shapes: the literal one sorts first.
        let d = build_route(
            &history,
            "/a/ListReviewHistory",
            Some(Pattern::Get("/v1/s/latest".to_owned())),
            "",
            None,
        )
        .unwrap();
        assert_eq!(precedence(&d.1, &d.0, &a.1, &a.0), Ordering::Less);
        assert_eq!(precedence(&a.1, &a.0, &d.1, &d.0), Ordering::Greater);
    }

    /// Templates that really compete for one path (same HTTP method, each
    /// matching some of the same paths), in one table: `find` answers with
    /// the most literal, comparing segments left to right, whatever order the
    /// routes were declared in. The embedded descriptors have no two routes
    /// that compete (see `tests/routes.rs`), so the table is built here.
    #[test]
    fn the_most_literal_of_competing_templates_wins_in_any_declaration_order() {
        const LITERAL: &str = "/t/Literal";
        const LEFT_LITERAL: &str = "/t/LeftLiteral";
        const RIGHT_LITERAL: &str = "/t/RightLiteral";
        const MULTI: &str = "/t/Multi";
        let get_sub = method("somastack.v1.CapsuleRepo", "GetSubmission");
        let built = |grpc: &str, template: &str| {
            let (route, template) =
                build_route(&get_sub, grpc, Some(Pattern::Get(template.to_owned())), "", None).unwrap();
            (route, template, true)
        };
        let all = [
            built(LITERAL, "/v1/s/latest"),
            built(LEFT_LITERAL, "/v1/s/{submission_id}"),
            // An unnamed `*`: its text sorts before `/v1/s/...`, so only the
            // segment ranks, not the text tie-break, can put it after.
            built(RIGHT_LITERAL, "/v1/*/latest"),
            built(MULTI, "/v1/{submission_id=**}"),
        ];
        let winner = |table: &RouteTable, path: &str| match table.find(&http::Method::GET, path) {
            RouteMatch::Found { route, path_params } => (route.grpc_path.clone(), path_params),
            other => panic!("{path}: {other:?}"),
        };
        let id = |v: &str| vec![("submission_id".to_owned(), v.to_owned())];

        // Every order of declaration gives one table order and one winner
        // per path.
        let orders: [[usize; 4]; 6] = [
            [0, 1, 2, 3],
            [3, 2, 1, 0],
            [1, 3, 0, 2],
            [2, 0, 3, 1],
            [3, 1, 2, 0],
            [0, 2, 1, 3],
        ];
        for order in orders {
            let table = RouteTable::from_built(order.iter().map(|&i| all[i].clone()).collect()).unwrap();
            let listed: Vec<&str> = table.iter().map(|r| r.grpc_path.as_str()).collect();
            assert_eq!(listed, [LITERAL, LEFT_LITERAL, RIGHT_LITERAL, MULTI], "{order:?}");
            struct Case {
                path: &'static str,
                winner: &'static str,
                params: Vec<(String, String)>,
            }
            let cases = [
                // All four match: the all-literal one.
                Case {
                    path: "/v1/s/latest",
                    winner: LITERAL,
                    params: vec![],
                },
                // `/v1/s/*` and `/v1/**`: a single segment before a multi.
                Case {
                    path: "/v1/s/other",
                    winner: LEFT_LITERAL,
                    params: id("other"),
                },
                // `/v1/*/latest` and `/v1/**`.
                Case {
                    path: "/v1/x/latest",
                    winner: RIGHT_LITERAL,
                    params: vec![],
                },
                // Only `/v1/**`.
                Case {
                    path: "/v1/a/b/c",
                    winner: MULTI,
                    params: id("a/b/c"),
                },
            ];
            for case in cases {
                assert_eq!(
                    winner(&table, case.path),
                    (case.winner.to_owned(), case.params),
                    "{order:?} {}",
                    case.path
                );
            }
        }

        // Without the all-literal route, `/v1/s/latest` is matched by both
        // one-variable templates: the literal further left wins.
        let table = RouteTable::from_built(vec![all[2].clone(), all[1].clone(), all[3].clone()]).unwrap();
        assert_eq!(
            winner(&table, "/v1/s/latest"),
            (LEFT_LITERAL.to_owned(), id("latest"))
        );
    }
}
