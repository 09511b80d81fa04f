//! A small namespace-aware XML tree over `quick-xml`, for WebDAV and CalDAV bodies: elements
//! are named by namespace URI and local name, whatever prefixes the server chose.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub use quick_xml::escape::escape;

/// WebDAV's namespace.
pub const DAV: &str = "DAV:";
/// CalDAV's namespace.
pub const CALDAV: &str = "urn:ietf:params:xml:ns:caldav";

/// One element: its namespace and local name, its child elements, and its text (character
/// data of the element itself, entities resolved, whitespace kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub ns: String,
    pub name: String,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The first child element named so.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// Every child element named so.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// The first element named so at any depth below this one.
    pub fn find(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| {
            if c.is(ns, name) {
                Some(c)
            } else {
                c.find(ns, name)
            }
        })
    }

    /// The text, without surrounding whitespace.
    pub fn trimmed(&self) -> &str {
        self.text.trim()
    }
}

fn str_of(text: &str) -> String {
    text.to_owned()
}

/// Parses a document into its root element.
pub fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("malformed XML: {e}"))?;
        let ns = match &resolved {
            ResolveResult::Bound(ns) => str_of(ns.as_ref()),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(prefix) => {
                return Err(format!("malformed XML: unknown namespace prefix {prefix}"))
            }
        };
        match event {
            Event::Start(start) | Event::Empty(start) if root.is_some() => {
                let _ = start;
                return Err("malformed XML: content after the root element".into());
            }
            Event::Start(start) => stack.push(Element {
                ns,
                name: str_of(start.local_name().as_ref()),
                ..Element::default()
            }),
            Event::Empty(start) => {
                let element = Element {
                    ns,
                    name: str_of(start.local_name().as_ref()),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or("malformed XML: an end tag without a start")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(text) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&str_of(data.as_ref()));
                }
            }
            Event::GeneralRef(reference) => {
                let Some(current) = stack.last_mut() else {
                    continue;
                };
                if reference.is_char_ref() {
                    let c = reference
                        .resolve_char_ref()
                        .map_err(|e| format!("malformed XML: {e}"))?
                        .ok_or("malformed XML: a bad character reference")?;
                    current.text.push(c);
                } else {
                    let name: &str = &reference;
                    let entity = format!("&{name};");
                    let resolved = quick_xml::escape::unescape(&entity)
                        .map_err(|_| format!("malformed XML: unknown entity {entity}"))?;
                    current.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("malformed XML: the document ends inside an element".into());
    }
    root.ok_or_else(|| "malformed XML: no root element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_through_any_prefix_and_text_keeps_entities() {
        let doc = parse(
            r#"<?xml version="1.0"?>
            <multistatus xmlns="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav">
              <response><href>/cal/a.ics</href>
                <propstat><prop><getetag>"1"</getetag>
                  <cal:calendar-data>BEGIN:VCALENDAR&#13;
SUMMARY:Tom &amp; Jerry&#13;
END:VCALENDAR</cal:calendar-data></prop>
                <status>HTTP/1.1 200 OK</status></propstat></response>
              <sync-token>tok-1</sync-token>
            </multistatus>"#,
        )
        .expect("parses");
        assert!(doc.is(DAV, "multistatus"));
        let response = doc.child(DAV, "response").expect("a response");
        assert_eq!(
            response.child(DAV, "href").expect("href").trimmed(),
            "/cal/a.ics"
        );
        let data = doc.find(CALDAV, "calendar-data").expect("calendar data");
        assert!(data.text.contains("Tom & Jerry\r\n"));
        assert_eq!(
            doc.child(DAV, "sync-token").expect("token").trimmed(),
            "tok-1"
        );
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<x:a/>").is_err());
    }
}
