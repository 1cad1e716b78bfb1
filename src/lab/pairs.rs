//! The quality bench's fixed content/style pairs (files in `examples/`, origins in examples/SOURCES.md): portraits,
//! a cityscape, landscapes and close-ups against ink, oil, expressionist and seascape paintings. The first three
//! are the README's grid; none of the others was used to choose the defaults' first candidates.

/// One pair: a short name, the content and the style image (paths relative to the project root).
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub name: &'static str,
    pub content: &'static str,
    pub style: &'static str,
}

const fn pair(name: &'static str, content: &'static str, style: &'static str) -> Pair {
    Pair { name, content, style }
}

pub const PAIRS: [Pair; 12] = [
    pair("tubingen-fuchun", "examples/tubingen.jpg", "examples/fuchun.jpg"),
    pair("tubingen-starry", "examples/tubingen.jpg", "examples/starry_night.jpg"),
    pair("astronaut-scream", "examples/astronaut.jpg", "examples/the_scream.jpg"),
    pair("astronaut-fuchun", "examples/astronaut.jpg", "examples/fuchun.jpg"),
    pair("chelsea-starry", "examples/chelsea.jpg", "examples/starry_night.jpg"),
    pair("chelsea-shipwreck", "examples/chelsea.jpg", "examples/shipwreck.jpg"),
    pair("coffee-scream", "examples/coffee.jpg", "examples/the_scream.jpg"),
    pair("coffee-fuchun", "examples/coffee.jpg", "examples/fuchun.jpg"),
    pair("rocket-shipwreck", "examples/rocket.jpg", "examples/shipwreck.jpg"),
    pair("toronto-scream", "examples/toronto.jpg", "examples/the_scream.jpg"),
    pair("toronto-fuchun", "examples/toronto.jpg", "examples/fuchun.jpg"),
    pair("canyon-shipwreck", "examples/grand_canyon.jpg", "examples/shipwreck.jpg"),
];
