//! The tumor mask as GeoJSON polygons in level-0 pixel coordinates, as QuPath imports them.
//!
//! Each tile in the mask is the square `[x, x + size] x [y, y + size]` at its coordinates;
//! the squares are merged with a polygon union (`geo`), so adjacent tiles become one polygon
//! and enclosed normal tissue stays a hole. Each connected region is one GeoJSON `Feature`
//! with QuPath's annotation properties and a "Tumor" classification.

use geo::{Area, Coord, LineString, MultiPolygon, Polygon, Rect};
use serde_json::{json, Value};

/// The union of the tiles in `mask` (tile `i` at `coords[i]`, `size` pixels a side).
pub fn mask_polygons(coords: &[[u32; 2]], mask: &[bool], size: u32) -> MultiPolygon<f64> {
    let squares: Vec<Polygon<f64>> = coords
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(c, _)| {
            let (x, y, s) = (c[0] as f64, c[1] as f64, size as f64);
            Rect::new(Coord { x, y }, Coord { x: x + s, y: y + s }).to_polygon()
        })
        .collect();
    if squares.is_empty() {
        return MultiPolygon::new(Vec::new());
    }
    geo::unary_union(&squares)
}

fn ring(line: &LineString<f64>) -> Value {
    Value::Array(
        line.coords()
            .map(|c| json!([c.x.round() as i64, c.y.round() as i64]))
            .collect(),
    )
}

/// A FeatureCollection with one annotation per region of `polygons`, classified "Tumor", named
/// after `slide`; each feature also carries its area in square pixels.
pub fn feature_collection(slide: &str, polygons: &MultiPolygon<f64>) -> Value {
    let features: Vec<Value> = polygons
        .0
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut rings = vec![ring(p.exterior())];
            rings.extend(p.interiors().iter().map(ring));
            json!({
                "type": "Feature",
                "geometry": { "type": "Polygon", "coordinates": rings },
                "properties": {
                    "objectType": "annotation",
                    "name": format!("{slide} tumor region {}", i + 1),
                    "classification": { "name": "Tumor", "color": [200, 0, 0] },
                    "isLocked": false,
                    "area_px2": p.unsigned_area(),
                },
            })
        })
        .collect();
    json!({ "type": "FeatureCollection", "features": features })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_tiles_merge_and_enclosed_tiles_leave_a_hole() {
        // A 3 x 3 block of tiles with its centre left out, and one tile apart.
        let mut coords = Vec::new();
        let mut mask = Vec::new();
        for y in 0..3u32 {
            for x in 0..3u32 {
                coords.push([x * 256, y * 256]);
                mask.push(!(x == 1 && y == 1));
            }
        }
        coords.push([2048, 0]);
        mask.push(true);
        let polygons = mask_polygons(&coords, &mask, 256);
        assert_eq!(polygons.0.len(), 2);
        let ring_block = polygons
            .0
            .iter()
            .find(|p| !p.interiors().is_empty())
            .expect("the block keeps its hole");
        assert_eq!(ring_block.interiors().len(), 1);
        // Area: 9 tiles of the mask, hand-counted.
        let area: f64 = polygons.0.iter().map(|p| p.unsigned_area()).sum();
        assert_eq!(area, 9.0 * 256.0 * 256.0);
        let fc = feature_collection("s1", &polygons);
        assert_eq!(fc["features"].as_array().unwrap().len(), 2);
        assert_eq!(
            fc["features"][0]["properties"]["classification"]["name"],
            "Tumor"
        );
    }

    #[test]
    fn an_empty_mask_has_no_features() {
        let polygons = mask_polygons(&[[0, 0]], &[false], 256);
        assert!(polygons.0.is_empty());
        assert_eq!(
            feature_collection("s", &polygons)["features"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }
}
