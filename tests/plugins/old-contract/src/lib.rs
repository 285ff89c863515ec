//! Built against another version of the contract (`wit/` here is drover:plugin@0.2.0).

wit_bindgen::generate!({ path: "wit", world: "drover:plugin/device-type" });

struct Old;

impl Guest for Old {
    fn describe() -> String {
        drover::plugin::log::emit("describe");
        "old-contract".into()
    }
}

export!(Old);

#[unsafe(link_section = "drover-manifest")]
#[used]
static MANIFEST: [u8; include_bytes!("../plugin.toml").len()] = *include_bytes!("../plugin.toml");
