//! The measuring lab's picture-quality side: measures computed outside the optimiser's network and the fixed set
//! of content/style pairs the quality bench runs (`fuchun quality`). Nothing in the product depends on it.

pub mod pairs;
pub mod quality;
