//! Headless Chromium (Debian package chromium) for the status page's tests,
//! and reading what it rendered: the DOM after the page's scripts ran, its
//! tables, and a screenshot decoded with the `png` crate.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::TempDir;
use crate::tools::require;

/// The longest one Chromium run may take (a loaded two-core machine
/// starts it slowly); then it is killed and the test fails.
pub const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(20);

/// Runs headless Chromium on `url` with `args`, letting the page's scripts
/// run for three seconds of virtual time; returns what it printed.
pub fn chromium(url: &str, args: &[String]) -> String {
    let chromium = require("chromium", "chromium");
    let dir = TempDir::new();
    let out_path = dir.path().join("out.txt");
    let err_path = dir.path().join("chromium.err");
    let out = std::fs::File::create(&out_path).expect("create chromium's output file");
    let err = std::fs::File::create(&err_path).expect("create chromium's stderr file");
    let mut child = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("--virtual-time-budget=3000")
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let pgid = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: kill(2) on the process group of the child we started.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    };
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(EVERY),
            Ok(None) => {
                kill_group();
                let _ = child.wait();
                panic!(
                    "chromium {args:?} {url} did not finish within {CHROMIUM_LIMIT:?}; killed\n\
                     stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            Err(e) => panic!("waiting for chromium: {e}"),
        }
    };
    // Whatever helper processes are left go too.
    kill_group();
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium {args:?} {url} failed ({status}); stdout:\n{out}\nstderr:\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    out
}

/// The DOM the page ended with after its scripts ran.
pub fn dump_dom(url: &str) -> String {
    let dom = chromium(url, &["--dump-dom".to_string()]);
    assert!(dom.contains("</html>"), "no page in --dump-dom:\n{dom}");
    dom
}

/// A screenshot of the page in a window of `size`, written to `path`.
pub fn screenshot(url: &str, path: &Path, size: (u32, u32)) {
    chromium(
        url,
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size={},{}", size.0, size.1),
        ],
    );
}

/// The inside of `<tbody>` of the table with `id`.
pub fn tbody<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table #{id} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let table = &rest[..rest.find("</table>").unwrap_or(rest.len())];
    let start = table
        .find("<tbody>")
        .unwrap_or_else(|| panic!("table #{id} has no <tbody>:\n{table}"))
        + "<tbody>".len();
    let end = table[start..]
        .find("</tbody>")
        .unwrap_or_else(|| panic!("table #{id} has no </tbody>:\n{table}"));
    &table[start..start + end]
}

/// The rows of a `<tbody>`: for each `<tr>`, the text of its cells and
/// whether any cell has a class (which only the page's script sets).
pub fn rows(body: &str) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    for tr in body.split("<tr").skip(1) {
        let mut cells = Vec::new();
        let mut classed = false;
        for td in tr.split("<td").skip(1) {
            let Some(gt) = td.find('>') else { continue };
            classed |= td[..gt].contains("class=");
            let inner = &td[gt + 1..];
            let text = inner.split("</td>").next().unwrap_or("");
            cells.push(
                text.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&amp;", "&"),
            );
        }
        out.push((cells, classed));
    }
    out
}

/// A decoded screenshot: its size and its pixels as 0xRRGGBBAA.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

/// Decodes an 8-bit RGB or RGBA PNG (what Chromium writes).
pub fn decode_png(bytes: &[u8]) -> Result<Picture, String> {
    let decoder = png::Decoder::new(bytes);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let bpp = match (info.bit_depth, info.color_type) {
        (png::BitDepth::Eight, png::ColorType::Rgb) => 3,
        (png::BitDepth::Eight, png::ColorType::Rgba) => 4,
        other => return Err(format!("{other:?}: not 8-bit RGB(A)")),
    };
    let pixels = buf[..info.buffer_size()]
        .chunks(bpp)
        .map(|px| u32::from_be_bytes([px[0], px[1], px[2], if bpp == 4 { px[3] } else { 255 }]))
        .collect();
    Ok(Picture {
        width: info.width,
        height: info.height,
        pixels,
    })
}
