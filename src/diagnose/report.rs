//! The self-contained HTML report of `bptt demo`: sections with two sentences of explanation,
//! the command that reproduces them, inline SVG figures, tables and text. No scripts, no
//! external files: it opens offline.

use std::fmt::Write;

/// One section of the report.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// What the figure shows, in a sentence or two.
    pub text: String,
    /// The command that reproduces it.
    pub command: String,
    /// Inline SVG documents.
    pub figures: Vec<String>,
    /// A table: header row first.
    pub table: Vec<Vec<String>>,
    /// Preformatted text (e.g. a sample).
    pub pre: Option<String>,
}

/// The report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Page title.
    pub title: String,
    /// Opening paragraph.
    pub intro: String,
    /// The sections, in order.
    pub sections: Vec<Section>,
    /// A closing note (machine, timings).
    pub footer: String,
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Report {
    /// The whole page.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
             body{{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:940px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}}\
             h1{{font-size:1.8em}} h2{{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}}\
             code,pre{{background:#f5f5f5;border-radius:4px}} code{{padding:.1em .3em}} pre{{padding:.8em;overflow-x:auto;white-space:pre-wrap}}\
             figure{{margin:1em 0}} figure svg{{max-width:100%;height:auto;border:1px solid #eee}}\
             table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ddd;padding:.3em .7em;text-align:right}} td{{white-space:nowrap}} th{{background:#f5f5f5}}\
             nav a{{margin-right:1em}} .cmd{{color:#555}}</style></head><body>\n<h1>{}</h1>\n<p>{}</p>\n<nav>",
            escape(&self.title),
            escape(&self.title),
            escape(&self.intro)
        );
        for (k, s) in self.sections.iter().enumerate() {
            let _ = write!(h, "<a href=\"#s{k}\">{}</a>", escape(&s.title));
        }
        h.push_str("</nav>\n");
        for (k, s) in self.sections.iter().enumerate() {
            let _ = write!(h, "<h2 id=\"s{k}\">{}</h2>\n<p>{}</p>\n", escape(&s.title), escape(&s.text));
            if !s.command.is_empty() {
                let _ = writeln!(h, "<p class=\"cmd\">Reproduce: <code>{}</code></p>", escape(&s.command));
            }
            for f in &s.figures {
                let svg = f.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>").trim_start();
                let _ = writeln!(h, "<figure>{svg}</figure>");
            }
            if let Some((head, rows)) = s.table.split_first() {
                h.push_str("<table><tr>");
                for c in head {
                    let _ = write!(h, "<th>{}</th>", escape(c));
                }
                h.push_str("</tr>");
                for r in rows {
                    h.push_str("<tr>");
                    for c in r {
                        let _ = write!(h, "<td>{}</td>", escape(c));
                    }
                    h.push_str("</tr>");
                }
                h.push_str("</table>\n");
            }
            if let Some(p) = &s.pre {
                let _ = writeln!(h, "<pre>{}</pre>", escape(p));
            }
        }
        let _ = writeln!(h, "<hr><p class=\"cmd\">{}</p></body></html>", escape(&self.footer));
        h
    }
}
