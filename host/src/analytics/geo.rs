//! Positions, distances and fences on the Earth.
//!
//! Distances between fixes are haversine (great circle, mean Earth radius). A fence's
//! boundary is measured in a local flat projection around the fix (equirectangular):
//! fences are at most a few hundred kilometres across, where its error is far below a
//! GPS fix's.

use serde::{Deserialize, Serialize};

/// Mean Earth radius (IUGG), metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A position fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    /// ms since the Unix epoch.
    pub at: i64,
    /// Reported accuracy radius, metres.
    pub accuracy: Option<f64>,
    /// Reported speed, m/s.
    pub speed: Option<f64>,
}

/// Great-circle distance in metres.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// A fence's area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
#[schema(as = GeofenceShape)]
pub enum Shape {
    /// A circle around a centre.
    Circle { lat: f64, lon: f64, radius_m: f64 },
    /// A polygon: its corners as `[lat, lon]`, in order (closed implicitly), 3 to 1,000.
    Polygon { points: Vec<[f64; 2]> },
}

/// Most corners of a polygon fence.
pub const MAX_CORNERS: usize = 1000;

impl Shape {
    /// What is wrong with the shape, if anything.
    pub fn problem(&self) -> Option<String> {
        let bad_pos = |lat: f64, lon: f64| !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
        match self {
            Shape::Circle { lat, lon, radius_m } => {
                if bad_pos(*lat, *lon) {
                    return Some(format!(
                        "circle centre ({lat}, {lon}) is not a position (lat -90..90, lon -180..180)"
                    ));
                }
                if !(radius_m.is_finite() && *radius_m > 0.0 && *radius_m <= 1_000_000.0) {
                    return Some(format!("radius_m {radius_m} must be above 0 and at most 1,000,000"));
                }
            }
            Shape::Polygon { points } => {
                if points.len() < 3 || points.len() > MAX_CORNERS {
                    return Some(format!("a polygon has 3 to {MAX_CORNERS} points, not {}", points.len()));
                }
                if let Some([lat, lon]) = points.iter().find(|[lat, lon]| bad_pos(*lat, *lon)) {
                    return Some(format!(
                        "polygon point [{lat}, {lon}] is not a position (lat -90..90, lon -180..180)"
                    ));
                }
                let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p[1]), hi.max(p[1])));
                if hi - lo > 180.0 {
                    return Some(
                        "a polygon may not span more than 180° of longitude (nor cross the antimeridian)".into(),
                    );
                }
            }
        }
        None
    }

    /// Signed distance from the fix to the boundary, metres: negative inside.
    pub fn signed_distance_m(&self, lat: f64, lon: f64) -> f64 {
        match self {
            Shape::Circle { lat: clat, lon: clon, radius_m } => haversine_m(lat, lon, *clat, *clon) - radius_m,
            Shape::Polygon { points } => {
                // Corners projected to metres around the fix, which is then the origin.
                let k = lat.to_radians().cos();
                let xy = |p: &[f64; 2]| {
                    ((p[1] - lon).to_radians() * k * EARTH_RADIUS_M, (p[0] - lat).to_radians() * EARTH_RADIUS_M)
                };
                let mut inside = false;
                let mut nearest = f64::MAX;
                for i in 0..points.len() {
                    let (x1, y1) = xy(&points[i]);
                    let (x2, y2) = xy(&points[(i + 1) % points.len()]);
                    // Ray casting along +x from the origin.
                    if (y1 > 0.0) != (y2 > 0.0) && x1 + (0.0 - y1) * (x2 - x1) / (y2 - y1) > 0.0 {
                        inside = !inside;
                    }
                    nearest = nearest.min(segment_distance(x1, y1, x2, y2));
                }
                if inside { -nearest } else { nearest }
            }
        }
    }
}

/// Distance from the origin to the segment (x1, y1)–(x2, y2).
fn segment_distance(x1: f64, y1: f64, x2: f64, y2: f64) -> f64 {
    let (dx, dy) = (x2 - x1, y2 - y1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 { 0.0 } else { (-(x1 * dx + y1 * dy) / len2).clamp(0.0, 1.0) };
    let (px, py) = (x1 + t * dx, y1 + t * dy);
    (px * px + py * py).sqrt()
}

/// Assumed accuracy of a fix that reports none, metres (a phone's GPS outdoors).
pub const DEFAULT_ACCURACY_M: f64 = 10.0;

/// Fixes closer in time than this give no derived speed (a division by almost nothing).
pub const MIN_SPEED_INTERVAL_MS: i64 = 1000;

/// Speed in km/h: the fix's own when it reports one, else derived from the previous fix
/// (haversine over the time between), counting only the distance beyond both fixes'
/// accuracy, so a parked device's jitter is no speed. `None`: no reported speed and no
/// usable previous fix.
pub fn speed_kmh(prev: Option<&Fix>, fix: &Fix) -> Option<f64> {
    if let Some(s) = fix.speed {
        return Some(s * 3.6);
    }
    let prev = prev?;
    let dt = fix.at - prev.at;
    if dt < MIN_SPEED_INTERVAL_MS {
        return None;
    }
    let d = haversine_m(prev.lat, prev.lon, fix.lat, fix.lon);
    let slack = prev.accuracy.unwrap_or(DEFAULT_ACCURACY_M) + fix.accuracy.unwrap_or(DEFAULT_ACCURACY_M);
    Some((d - slack).max(0.0) / (dt as f64 / 1000.0) * 3.6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // Paris–London, ~343.5 km; one degree of latitude, ~111.2 km.
        let d = haversine_m(48.8566, 2.3522, 51.5074, -0.1278);
        assert!((d - 343_500.0).abs() < 1_500.0, "{d}");
        assert!((haversine_m(0.0, 0.0, 1.0, 0.0) - 111_195.0).abs() < 5.0);
    }

    #[test]
    fn signed_distance_to_a_circle_and_a_polygon() {
        let c = Shape::Circle { lat: 6.9271, lon: 79.8612, radius_m: 500.0 };
        assert!((c.signed_distance_m(6.9271, 79.8612) + 500.0).abs() < 1e-6);
        // ~1,112 m north of the centre: ~612 m outside.
        assert!((c.signed_distance_m(6.9371, 79.8612) - 612.0).abs() < 2.0);
        // A square 0.01° on a side (~1,112 m) around (0.005, 0.005).
        let p = Shape::Polygon { points: vec![[0.0, 0.0], [0.0, 0.01], [0.01, 0.01], [0.01, 0.0]] };
        let centre = p.signed_distance_m(0.005, 0.005);
        assert!((centre + 556.0).abs() < 2.0, "{centre}");
        let east = p.signed_distance_m(0.005, 0.011);
        assert!((east - 111.2).abs() < 1.0, "{east}");
        assert!(p.signed_distance_m(0.02, 0.02) > 0.0);
        assert_eq!(p.problem(), None);
        assert!(Shape::Polygon { points: vec![[0.0, 0.0], [1.0, 1.0]] }.problem().unwrap().contains("3 to"));
        assert!(Shape::Circle { lat: 91.0, lon: 0.0, radius_m: 1.0 }.problem().unwrap().contains("not a position"));
    }

    #[test]
    fn derived_speed_ignores_jitter_within_accuracy() {
        let a = Fix { lat: 0.0, lon: 0.0, at: 0, accuracy: Some(5.0), speed: None };
        // 8 m in 1 s with 5 m accuracy each: within the slack, parked.
        let jitter = Fix { lat: 0.000072, at: 1000, ..a };
        assert_eq!(speed_kmh(Some(&a), &jitter), Some(0.0));
        // ~1,112 m in 36 s: ~110 km/h (less the 10 m slack).
        let moved = Fix { lat: 0.01, at: 36_000, ..a };
        let v = speed_kmh(Some(&a), &moved).unwrap();
        assert!((v - 110.2).abs() < 1.0, "{v}");
        assert_eq!(speed_kmh(None, &moved), None);
        assert_eq!(speed_kmh(Some(&a), &Fix { speed: Some(10.0), ..moved }), Some(36.0));
    }
}
