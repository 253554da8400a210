//! Image garbage collection, as kubelet's image manager does it: when the
//! image filesystem is `image-gc-high-threshold` percent full (85 by
//! default), images no container uses are removed through CRI
//! `RemoveImage`, least recently used first, until it is
//! `image-gc-low-threshold` percent full (80). Under disk pressure the
//! eviction loop removes every unused image before it evicts a pod
//! (kubelet's node-level reclaim).
//!
//! Never removed: an image a container (running or exited) was created
//! from, one the runtime pins (containerd pins the sandbox image), the
//! configured pause image and this binary's addon image, the images
//! imported from the air-gap folder (RKE2 pins them: no registry may
//! serve them again), and one first
//! seen less than [`MIN_AGE`] ago (kubelet's `image-minimum-gc-age`: an
//! image just pulled for a pod about to start stays).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rke2_runtime::cri::{Cri, api};
use tracing::{debug, info, warn};

/// kubelet's default `image-minimum-gc-age`.
pub const MIN_AGE: Duration = Duration::from_secs(120);

/// One image as the collector sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// The CRI image id.
    pub id: String,
    /// Its tags (for the protected names and the logs).
    pub tags: Vec<String>,
    /// Size, bytes.
    pub size: i128,
    /// The runtime asks to keep it.
    pub pinned: bool,
}

/// When an image was first seen and last seen in use (kubelet's
/// `imageRecord`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Record {
    first_detected: Instant,
    last_used: Instant,
}

/// What is never collected.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// Image references (the pause and addon images).
    pub references: Vec<String>,
    /// The references imported from the air-gap folder (filled as the
    /// importer imports).
    pub imported: rke2_runtime::images::ImportedRefs,
}

/// The collector's memory of the images: kept across periods so that
/// "least recently used" means something.
#[derive(Debug, Default)]
pub struct ImageGc {
    records: HashMap<String, Record>,
    protected: Protected,
}

/// How many bytes to free for image filesystem usage to go from above
/// `high` percent down to `low` percent; 0 below `high` (kubelet's
/// `GarbageCollect` arithmetic).
pub fn bytes_to_free(capacity: i128, available: i128, high: u8, low: u8) -> i128 {
    if capacity <= 0 {
        return 0;
    }
    let used_percent = (capacity - available) * 100 / capacity;
    if used_percent < i128::from(high) {
        return 0;
    }
    (capacity * (100 - i128::from(low)) / 100 - available).max(0)
}

impl ImageGc {
    /// A collector that never removes the `protected` images.
    pub fn new(protected: Protected) -> ImageGc {
        ImageGc {
            records: HashMap::new(),
            protected,
        }
    }

    /// Records what exists and what is in use at `now` (kubelet's
    /// `detectImages`); forgets images that are gone.
    pub fn observe(&mut self, images: &[ImageInfo], in_use: &HashSet<String>, now: Instant) {
        let ids: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.records.retain(|id, _| ids.contains(id.as_str()));
        for i in images {
            let r = self.records.entry(i.id.clone()).or_insert(Record {
                first_detected: now,
                last_used: now,
            });
            if in_use.contains(&i.id) {
                r.last_used = now;
            }
        }
    }

    /// The images to remove to free `want` bytes, in order (least
    /// recently used first, then first detected), skipping what is in
    /// use, pinned, protected or younger than [`MIN_AGE`]. May free less
    /// than asked when that is all there is.
    pub fn select(
        &self,
        images: &[ImageInfo],
        in_use: &HashSet<String>,
        want: i128,
        now: Instant,
    ) -> Vec<ImageInfo> {
        let mut candidates: Vec<(&ImageInfo, Record)> = images
            .iter()
            .filter(|i| {
                !in_use.contains(&i.id) && !i.pinned && !i.tags.iter().any(|t| self.is_protected(t))
            })
            .filter_map(|i| Some((i, *self.records.get(&i.id)?)))
            .filter(|(_, r)| now.saturating_duration_since(r.first_detected) >= MIN_AGE)
            .collect();
        candidates.sort_by_key(|(i, r)| (r.last_used, r.first_detected, i.id.clone()));
        let mut freed = 0;
        let mut out = Vec::new();
        for (i, _) in candidates {
            if freed >= want {
                break;
            }
            freed += i.size;
            out.push(i.clone());
        }
        out
    }

    fn is_protected(&self, tag: &str) -> bool {
        let same = |p: &String| {
            p == tag
                // A reference without a registry is stored under docker.io.
                || format!("docker.io/{p}") == tag
                || format!("docker.io/library/{p}") == tag
        };
        self.protected.references.iter().any(same)
            || self
                .protected
                .imported
                .lock()
                .is_ok_and(|set| set.iter().any(same))
    }

    /// One round against the runtime: frees `want` bytes of unused images
    /// (`i128::MAX` for all of them); returns the bytes freed.
    pub async fn collect(&mut self, cri: &Cri, want: i128) -> i128 {
        let Some((images, in_use)) = list(cri).await else {
            return 0;
        };
        let now = Instant::now();
        self.observe(&images, &in_use, now);
        if want <= 0 {
            return 0;
        }
        let mut freed = 0;
        for i in self.select(&images, &in_use, want, now) {
            let name = i.tags.first().cloned().unwrap_or_else(|| i.id.clone());
            match cri
                .images()
                .remove_image(api::RemoveImageRequest {
                    image: Some(api::ImageSpec {
                        image: i.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
            {
                Ok(_) => {
                    info!(image = %name, bytes = i.size, "removed an unused image");
                    freed += i.size;
                    self.records.remove(&i.id);
                }
                Err(s) => warn!(image = %name, error = %s.message(), "removing an unused image"),
            }
        }
        freed
    }
}

/// The images and the ids containers were created from.
async fn list(cri: &Cri) -> Option<(Vec<ImageInfo>, HashSet<String>)> {
    let images = match cri
        .images()
        .list_images(api::ListImagesRequest { filter: None })
        .await
    {
        Ok(r) => r.into_inner().images,
        Err(s) => {
            debug!(error = %s.message(), "listing images for garbage collection");
            return None;
        }
    };
    let ctrs = cri
        .runtime()
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .ok()?
        .into_inner()
        .containers;
    let mut in_use: HashSet<String> = HashSet::new();
    for c in ctrs {
        in_use.insert(c.image_ref.clone());
        if let Some(spec) = c.image {
            in_use.insert(spec.image);
        }
    }
    // A container names its image by id or by reference: both count.
    let images: Vec<ImageInfo> = images
        .into_iter()
        .map(|i| ImageInfo {
            id: i.id,
            tags: i.repo_tags,
            size: i128::from(i.size),
            pinned: i.pinned,
        })
        .collect();
    let mut used_ids = HashSet::new();
    for i in &images {
        if in_use.contains(&i.id) || i.tags.iter().any(|t| in_use.contains(t)) {
            used_ids.insert(i.id.clone());
        }
    }
    Some((images, used_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, tag: &str, size: i128) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            tags: vec![tag.into()],
            size,
            pinned: false,
        }
    }

    #[test]
    fn frees_from_high_down_to_low() {
        // 100 GiB, 10 free: 90% used, above 85: free down to 80% used.
        let g = 1i128 << 30;
        assert_eq!(bytes_to_free(100 * g, 10 * g, 85, 80), 10 * g);
        assert_eq!(bytes_to_free(100 * g, 16 * g, 85, 80), 0, "84% is below");
        assert_eq!(
            bytes_to_free(100 * g, 15 * g, 85, 80),
            5 * g,
            "85% is at it"
        );
        assert_eq!(bytes_to_free(0, 0, 85, 80), 0);
    }

    #[test]
    fn least_recently_used_first_and_never_what_is_kept() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let protected = Protected {
            references: vec![
                "rancher/mirrored-pause:3.6".into(),
                "rke2.local/rke2-addons:v1".into(),
            ],
            imported: Default::default(),
        };
        protected
            .imported
            .lock()
            .unwrap()
            .insert("docker.io/library/airgap:1".into());
        let mut gc = ImageGc::new(protected);
        let mut pinned = img("sha256:pin", "k8s.gcr.io/other:1", 100);
        pinned.pinned = true;
        let images = vec![
            img("sha256:old", "docker.io/library/old:1", 300),
            img("sha256:recent", "docker.io/library/recent:1", 200),
            img("sha256:busy", "docker.io/library/busy:1", 500),
            img("sha256:pause", "docker.io/rancher/mirrored-pause:3.6", 50),
            img("sha256:addon", "rke2.local/rke2-addons:v1", 400),
            img("sha256:airgap", "docker.io/library/airgap:1", 400),
            pinned,
        ];
        let busy: HashSet<String> = ["sha256:busy".to_string()].into();
        let none = HashSet::new();
        // "recent" was in use until 100 s, "old" never.
        let recent: HashSet<String> = ["sha256:recent".to_string()].into();
        gc.observe(&images, &recent, at(0));
        gc.observe(&images, &recent, at(100));
        gc.observe(&images, &busy, at(200));
        // Too young: nothing before the minimum age.
        assert!(gc.select(&images, &busy, i128::MAX, at(100)).is_empty());
        let ids = |v: Vec<ImageInfo>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
        let all = ids(gc.select(&images, &busy, i128::MAX, at(300)));
        assert_eq!(all, ["sha256:old", "sha256:recent"]);
        // Only as much as asked: the least recently used is enough.
        assert_eq!(ids(gc.select(&images, &busy, 250, at(300))), ["sha256:old"]);
        assert_eq!(
            ids(gc.select(&images, &busy, 301, at(300))),
            ["sha256:old", "sha256:recent"]
        );
        assert!(gc.select(&images, &busy, 0, at(300)).is_empty());
        // Unused now, "busy" goes too, but last: it was used at 200 s.
        gc.observe(&images, &none, at(300));
        assert_eq!(
            ids(gc.select(&images, &none, i128::MAX, at(400))),
            ["sha256:old", "sha256:recent", "sha256:busy"]
        );
        // A removed image is forgotten.
        gc.observe(&images[1..], &none, at(500));
        assert!(!gc.records.contains_key("sha256:old"));
    }
}
