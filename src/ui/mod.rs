//! The Web UI's pages, as pure functions from the service's replies
//! ([`RunSummary`](crate::api::RunSummary), [`RunDescription`](crate::api::RunDescription),
//! histories) to HTML strings: server-rendered, readable without JavaScript,
//! with a little inline script for live refresh. The HTTP routes that gather
//! the data and serve these pages are in `src/http/ui.rs`; the timeline
//! renderer ([`timeline`]) is shared with the simulator's failure pages.
//!
//! Every piece of user-provided text (workflow ids, types, payloads, failure
//! messages) goes through [`html::escape`].

mod cluster;
pub mod html;
mod queues;
mod run;
mod runs;
pub mod timeline;

pub use cluster::cluster_page;
pub use queues::{Poller, QueueView, task_queues_page};
pub use run::{HistoryView, RunView, history_table, run_page};
pub use runs::{RunFilter, RunsView, runs_page};

use html::escape;

/// How often pages with live refresh on reload their content.
pub const LIVE_REFRESH_MS: u64 = 2_000;

/// The pages' styles.
const PAGE_CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#24292f;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:0 16px}
header nav{display:flex;gap:16px;align-items:center;min-height:44px;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}
header .brand{font-weight:700;margin-right:8px}
header a:hover,header a:focus{text-decoration:underline}
main{padding:16px;max-width:1400px;margin:0 auto}
h1{font-size:20px;margin:4px 0 12px;word-break:break-all}
h2{font-size:16px;margin:20px 0 8px}
.card>h2:first-child,section.card>h2:first-of-type{margin-top:0}
a{color:#0969da}
a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,summary:focus-visible{outline:3px solid #0969da;outline-offset:2px}
.skip{position:absolute;left:-999px}
.skip:focus{left:8px;top:8px;background:#fff;color:#0969da;padding:4px 8px;z-index:1}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin-bottom:16px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-weight:600;background:#f6f8fa;white-space:nowrap}
td.id{word-break:break-all;min-width:8em}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;word-break:break-all;margin:4px 0;background:#f6f8fa;padding:8px;border-radius:4px;max-height:24em;overflow:auto}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:#57606a;white-space:nowrap}
.status.Running{background:#0969da}.status.Completed{background:#1a7f37}.status.Failed{background:#cf222e}
.status.TimedOut{background:#bc4c00}.status.Terminated{background:#6e4c02}.status.Canceled{background:#6e7781}
.counts{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:12px}
.counts a{display:block;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:6px 12px;text-decoration:none;color:#24292f}
.counts a.active{border-color:#0969da;box-shadow:inset 0 -2px #0969da}
.counts b{display:block;font-size:18px}
form.filters{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px;align-items:end}
label{display:block;font-size:12px;color:#57606a}
input,select,textarea,button{font:inherit;padding:5px 8px;border:1px solid #d0d7de;border-radius:6px;max-width:100%}
input,select,textarea{width:100%;background:#fff;color:#24292f}
button{background:#f6f8fa;cursor:pointer;font-weight:600}
button.primary{background:#1f883d;color:#fff;border-color:#1a7f37}
button.danger{background:#cf222e;color:#fff;border-color:#a40e26}
.actions{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.actions form{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;display:flex;flex-direction:column;gap:6px}
.actions h3{margin:0;font-size:14px}
label.check{display:flex;gap:6px;align-items:center;color:#24292f;font-size:13px}
label.check input{width:auto}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.summary dt{color:#57606a}
dl.summary dd{margin:0;word-break:break-all}
.pager{display:flex;gap:12px;align-items:center;margin:12px 0}
.flash{background:#ddf4ff;border:1px solid #54aeff;border-radius:6px;padding:8px 12px;margin-bottom:12px}
.flash.error{background:#ffebe9;border-color:#ff8182}
.muted{color:#57606a}
details.event summary{cursor:pointer}
table.history summary code{word-break:break-all}
table.history td:first-child,table.history td:nth-child(2){white-space:nowrap}
ol.chain{margin:4px 0;padding-left:20px}
.toolbar{display:flex;gap:12px;flex-wrap:wrap;align-items:center;margin:8px 0}
@media (max-width:600px){main{padding:8px}dl.summary{grid-template-columns:1fr}dl.summary dd{margin-bottom:6px}
 th.wide,td.wide,table.history th:nth-child(2),table.history td:nth-child(2){display:none}
 table.history thead{display:none}
 table.history tr{display:block;border-bottom:1px solid #eaeef2;padding:4px 0}
 table.history td{display:inline;border:none;padding:2px 4px}
 table.history td:last-child{display:block}}
"#;

/// The timeline's detail line: the hovered or focused bar's title, in
/// `#timeline-detail` (native tooltips show on hover only).
/// Live refresh: while `#live` is checked, re-fetches the page and swaps
/// each element marked `data-live` for its fresh copy (by id) when it
/// changed, or removes it when the fresh page has none (a closed run's
/// actions). Forms are swapped only when their markup changed, so what is
/// typed in them survives.
const PAGE_JS: &str = r#"
(function(){
  function show(e){
    var mark=e.target.closest&&e.target.closest('svg.timeline a, svg.timeline g[tabindex]');
    var box=document.getElementById('timeline-detail');
    if(!mark||!box)return;
    var title=mark.querySelector('title');
    box.textContent=title?title.textContent:'';
  }
  document.addEventListener('mouseover',show);
  document.addEventListener('focusin',show);
})();
(function(){
  var box=document.getElementById('live');
  if(!box)return;
  box.closest('.live-toggle').hidden=false;
  setInterval(function(){
    if(!box.checked||document.hidden)return;
    fetch(location.href,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null}).then(function(t){
      if(!t)return;
      var doc=new DOMParser().parseFromString(t,'text/html');
      [].forEach.call(document.querySelectorAll('[data-live]'),function(el){
        var fresh=doc.getElementById(el.id);
        if(!fresh){el.remove();return}
        if(fresh.innerHTML===el.innerHTML)return;
        var open=[].map.call(el.querySelectorAll('details[open]'),function(d){return d.id});
        el.innerHTML=fresh.innerHTML;
        open.forEach(function(id){var d=id&&document.getElementById(id);if(d)d.open=true});
      });
    }).catch(function(){});
  },REFRESH_MS);
})();
"#;

/// Where the server serves [`stylesheet`] and [`script`] (pages load them
/// from there, so the Content-Security-Policy can forbid inline code).
pub const STYLESHEET_PATH: &str = "/assets/retrace.css";
/// Where the server serves [`script`].
pub const SCRIPT_PATH: &str = "/assets/retrace.js";

/// The pages' stylesheet.
pub fn stylesheet() -> String {
    format!("{PAGE_CSS}{}", timeline::TIMELINE_CSS)
}

/// The pages' script (live refresh).
pub fn script() -> String {
    PAGE_JS.replace("REFRESH_MS", &LIVE_REFRESH_MS.to_string())
}

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Retrace</title><link rel=\"stylesheet\" href=\"{STYLESHEET_PATH}\">\
         <script src=\"{SCRIPT_PATH}\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><nav aria-label=\"main\"><a class=\"brand\" href=\"/\">Retrace</a>\
         <a href=\"/\">Runs</a><a href=\"/task-queues\">Task queues</a><a href=\"/cluster\">Cluster</a></nav></header>\
         <main id=\"main\">{body}</main></body></html>",
        escape(title),
    )
}

/// A self-contained page (no links to a server, no script): the simulator's
/// failure pages.
pub fn standalone_page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{PAGE_CSS}{}</style></head><body>\
         <header><nav aria-label=\"main\"><span class=\"brand\">Retrace</span></nav></header>\
         <main id=\"main\">{body}</main></body></html>",
        escape(title),
        timeline::TIMELINE_CSS
    )
}

/// The live refresh switch (hidden until the script shows it: without
/// JavaScript there is nothing to switch).
fn live_toggle() -> &'static str {
    "<span class=\"live-toggle\" hidden><label class=\"check\"><input type=\"checkbox\" \
     id=\"live\" checked> Live refresh</label></span>"
}

/// A status badge.
fn status_badge(status: crate::env::RunStatus) -> String {
    let name = status.as_str();
    format!("<span class=\"status {name}\">{name}</span>")
}

/// A message above a page's content (`error` styles it as one).
pub fn flash(message: &str, error: bool) -> String {
    let class = if error { "flash error" } else { "flash" };
    format!(
        "<div class=\"{class}\" role=\"status\">{}</div>",
        escape(message)
    )
}

/// The page that asks for the server's token once (it is then kept in a cookie).
pub fn login_page(wrong: bool) -> String {
    let message = if wrong {
        flash("That token is not this server's.", true)
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Sign in</h1>{message}<div class=\"card\"><p>This server requires a token \
         (<code>--token</code> or <code>RETRACE_TOKEN</code>). It is kept in an HttpOnly cookie \
         for this site only.</p><form method=\"post\" action=\"/login\" class=\"filters\">\
         <div><label for=\"token\">Token</label><input id=\"token\" name=\"token\" \
         type=\"password\" autocomplete=\"current-password\" required autofocus></div>\
         <div><button class=\"primary\" type=\"submit\">Sign in</button></div></form></div>"
    );
    page("Sign in", &body)
}

/// A page that only says what went wrong.
pub fn error_page(title: &str, message: &str) -> String {
    let body = format!(
        "<h1>{}</h1>{}<p><a href=\"/\">All runs</a></p>",
        escape(title),
        flash(message, true)
    );
    page(title, &body)
}
