//! Geofence geometry: great-circle distance for circles, ray casting for polygons.
//!
//! Site fences are small (50 m to 5 km), so a polygon is tested in the plane of latitude and longitude; the error of that
//! approximation at this scale is far below GPS accuracy.

/// Mean Earth radius in metres (IUGG).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A geofence in force for a group.
#[derive(Clone, Debug, PartialEq)]
pub enum Geofence {
    /// Inside when the great-circle distance to the centre is at most the radius.
    Circle { lat: f64, lng: f64, radius_m: f64 },
    /// Inside when the point lies in the polygon (vertices as latitude, longitude; the ring closes itself).
    Polygon(Vec<(f64, f64)>),
}

impl Geofence {
    /// Whether a GPS point lies inside the fence. Points exactly on the circle are inside.
    /// The fence's radius in metres: a circle's own; for a polygon, that of the circle around its vertices' mean
    /// through its farthest vertex. A GPS fix less accurate than this cannot tell inside from outside.
    pub fn radius_m(&self) -> f64 {
        match self {
            Geofence::Circle { radius_m, .. } => *radius_m,
            Geofence::Polygon(ring) => {
                let n = ring.len().max(1) as f64;
                let (clat, clng) = ring.iter().fold((0.0, 0.0), |(a, b), (lat, lng)| (a + lat / n, b + lng / n));
                ring.iter().map(|(lat, lng)| distance_m(clat, clng, *lat, *lng)).fold(0.0, f64::max)
            }
        }
    }

    pub fn contains(&self, lat: f64, lng: f64) -> bool {
        match self {
            Geofence::Circle { lat: clat, lng: clng, radius_m } => distance_m(*clat, *clng, lat, lng) <= *radius_m,
            Geofence::Polygon(ring) => in_polygon(ring, lat, lng),
        }
    }
}

/// Haversine distance between two points, in metres.
pub fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Even-odd ray casting; `ring` needs at least three vertices.
pub fn in_polygon(ring: &[(f64, f64)], lat: f64, lng: f64) -> bool {
    if ring.len() < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let (yi, xi) = ring[i];
        let (yj, xj) = ring[j];
        if (yi > lat) != (yj > lat) {
            let x_cross = xi + (lat - yi) * (xj - xi) / (yj - yi);
            if lng < x_cross {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circle_edges() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m(31.0, 121.0, 32.0, 121.0);
        assert!((d - 111_195.0).abs() < 100.0, "{d}");
        let fence = Geofence::Circle { lat: 31.2304, lng: 121.4737, radius_m: 200.0 };
        assert!(fence.contains(31.2304, 121.4737));
        // ~150 m north: inside; ~250 m north: outside.
        assert!(fence.contains(31.2304 + 150.0 / 111_195.0, 121.4737));
        assert!(!fence.contains(31.2304 + 250.0 / 111_195.0, 121.4737));
    }

    #[test]
    fn polygon_square_and_concave() {
        let square = Geofence::Polygon(vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]);
        assert!(square.contains(0.5, 0.5));
        assert!(!square.contains(1.5, 0.5));
        assert!(!square.contains(0.5, -0.1));
        // An L shape: the notch is outside.
        let l = Geofence::Polygon(vec![(0.0, 0.0), (0.0, 2.0), (1.0, 2.0), (1.0, 1.0), (2.0, 1.0), (2.0, 0.0)]);
        assert!(l.contains(0.5, 1.5));
        assert!(l.contains(1.5, 0.5));
        assert!(!l.contains(1.5, 1.5));
        assert!(!in_polygon(&[(0.0, 0.0), (1.0, 1.0)], 0.5, 0.5));
    }
}
