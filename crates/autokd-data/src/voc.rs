//! PASCAL VOC object detection (`voc:DIR`): one XML file per image (`<filename>`, `<size>`, and an
//! `<object>` per box with `<name>`, `<difficult>` and `<bndbox>` `xmin … ymax`).
//!
//! Two layouts are read: VOC's own (`DIR/Annotations/*.xml`, images in `DIR/JPEGImages`, splits
//! `DIR/ImageSets/Main/train.txt` and `val.txt`, the latter the test split; without them every
//! image is for training), and a flat folder of XML files beside their images (DeepForest's
//! `data/`), all for training. An image is the XML's `<filename>` in the image folder, or, where
//! that file is missing or not a format decoded here (DeepForest names a `.tif` beside a `.png`),
//! the XML's stem with `.png`, `.jpg` or `.jpeg`.
//!
//! Classes: `DIR/class_names.txt` (labelme's export; a first `_background_` is dropped), else
//! VOC's 20 where every name is one of them, else the distinct names found, sorted. Coordinates
//! are taken as written, as continuous pixel coordinates (mmdet ≥ 2 and torchvision do not
//! subtract VOC's 1-based offset either). A `difficult` object becomes a crowd box: ignored in
//! training, matched leniently in evaluation (VOC's own metric ignores it). The XML files are read
//! when the dataset is loaded (a malformed one is an error naming it); images are decoded when a
//! batch is built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quick_xml::events::Event;

use crate::annotation::{Annotation, BoxAnnotation};
use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::folder::decode_rgb;
use crate::image::{Image, ImageSource};
use crate::vocseg::split_names;

/// PASCAL VOC's 20 object classes.
pub const VOC_DETECTION_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The resize target of detection datasets by default: the shorter side to 800, the longer at
/// most 1,333 (mmdet's and torchvision's `(1333, 800)`, kept ratio).
pub const DEFAULT_DETECTION_SIZE: (usize, usize) = (800, 1333);

/// One object of a VOC XML file, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct VocObject {
    /// Its class name.
    pub name: String,
    /// `[xmin, ymin, xmax, ymax]`.
    pub bndbox: [f32; 4],
    /// VOC's `difficult` flag.
    pub difficult: bool,
}

/// One parsed VOC XML file.
#[derive(Debug, Clone, PartialEq)]
pub struct VocFile {
    /// `<filename>`, if given.
    pub filename: Option<String>,
    /// `<size>` `(width, height)`, if given.
    pub size: Option<(usize, usize)>,
    /// The objects, in file order.
    pub objects: Vec<VocObject>,
}

/// Parses the text of a VOC XML file; `path` names it in errors.
pub fn parse_voc_xml(text: &str, path: &Path) -> Result<VocFile> {
    let bad = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut file = VocFile {
        filename: None,
        size: None,
        objects: Vec::new(),
    };
    let (mut width, mut height) = (None, None);
    // The object being read: name, xmin, ymin, xmax, ymax, difficult.
    let mut name: Option<String> = None;
    let mut coords: [Option<f32>; 4] = [None; 4];
    let mut difficult = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| bad(format!("not well-formed XML: {e}")))?;
        match event {
            Event::Start(e) => {
                stack.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                buf.clear();
                if stack.len() == 2 && stack[1] == "object" {
                    name = None;
                    coords = [None; 4];
                    difficult = false;
                }
            }
            Event::Text(t) => buf.push_str(
                &t.decode()
                    .map_err(|e| bad(format!("undecodable text: {e}")))?,
            ),
            Event::GeneralRef(r) => {
                let entity = r.decode().map_err(|e| bad(format!("bad entity: {e}")))?;
                let c = match entity.as_ref() {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    _ => r.resolve_char_ref().ok().flatten(),
                };
                let c = c.ok_or_else(|| bad(format!("unknown entity &{entity};")))?;
                buf.push(c);
            }
            Event::End(_) => {
                let path_now: Vec<&str> = stack.iter().map(String::as_str).collect();
                let value = buf.trim();
                let number = |what: &str| -> Result<f32> {
                    value
                        .parse::<f32>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            bad(format!(
                                "object {}: <{what}> is `{value}`, expected a number",
                                file.objects.len()
                            ))
                        })
                };
                match path_now[..] {
                    [_, "filename"] => file.filename = Some(value.to_string()),
                    [_, "size", "width"] => width = value.parse::<usize>().ok(),
                    [_, "size", "height"] => height = value.parse::<usize>().ok(),
                    [_, "object", "name"] => name = Some(value.to_string()),
                    [_, "object", "difficult"] => difficult = value == "1",
                    [_, "object", "bndbox", c] => {
                        if let Some(k) = ["xmin", "ymin", "xmax", "ymax"]
                            .iter()
                            .position(|x| *x == c)
                        {
                            coords[k] = Some(number(c)?);
                        }
                    }
                    [_, "object"] => {
                        let k = file.objects.len();
                        let name = name
                            .take()
                            .filter(|n| !n.is_empty())
                            .ok_or_else(|| bad(format!("object {k} has no <name>")))?;
                        let [Some(x1), Some(y1), Some(x2), Some(y2)] = coords else {
                            return Err(bad(format!(
                                "object {k} (`{name}`) lacks one of <bndbox> xmin, ymin, xmax, ymax"
                            )));
                        };
                        if x2 <= x1 || y2 <= y1 {
                            return Err(bad(format!(
                                "object {k} (`{name}`): box [{x1}, {y1}, {x2}, {y2}] is empty; \
                                 expected xmin < xmax and ymin < ymax"
                            )));
                        }
                        file.objects.push(VocObject {
                            name,
                            bndbox: [x1, y1, x2, y2],
                            difficult,
                        });
                    }
                    _ => {}
                }
                stack.pop();
                buf.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let (Some(w), Some(h)) = (width, height) {
        file.size = Some((w, h));
    }
    Ok(file)
}

/// Images with their boxes (read at load time), decoded on demand.
#[derive(Debug, Clone)]
pub struct BoxedFiles {
    items: Vec<(PathBuf, Vec<BoxAnnotation>)>,
}

impl BoxedFiles {
    /// Images and their boxes.
    pub fn new(items: Vec<(PathBuf, Vec<BoxAnnotation>)>) -> Self {
        Self { items }
    }

    /// The images and their boxes, in order.
    pub fn items(&self) -> &[(PathBuf, Vec<BoxAnnotation>)] {
        &self.items
    }

    fn item(&self, index: usize) -> Result<&(PathBuf, Vec<BoxAnnotation>)> {
        self.items.get(index).ok_or_else(|| {
            DataError::Config(format!(
                "image index {index} out of range (0..{})",
                self.items.len()
            ))
        })
    }
}

impl ImageSource for BoxedFiles {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn label(&self, _index: usize) -> usize {
        0
    }

    fn image(&self, index: usize) -> Result<Image> {
        decode_rgb(&self.item(index)?.0)
    }

    fn annotation(&self, index: usize) -> Result<Annotation> {
        Ok(Annotation::Boxes(self.item(index)?.1.clone()))
    }
}

/// The image of an XML file (see the module documentation).
fn image_path(xml: &Path, parsed: &VocFile, images: &Path) -> Result<PathBuf> {
    let decodable = |p: &Path| {
        p.is_file()
            && p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
    };
    if let Some(name) = &parsed.filename {
        let p = images.join(name);
        if decodable(&p) {
            return Ok(p);
        }
    }
    let stem = xml.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    for ext in ["png", "jpg", "jpeg", "PNG", "JPG", "JPEG"] {
        let p = images.join(format!("{stem}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::Config(format!(
        "{}: no image found in {} (tried <filename> `{}` and {stem}.png/.jpg/.jpeg)",
        xml.display(),
        images.display(),
        parsed.filename.as_deref().unwrap_or("")
    )))
}

/// Reads a VOC detection folder (see the module documentation).
pub fn load(dir: &Path) -> Result<Dataset> {
    let voc_layout = dir.join("Annotations").is_dir();
    let (xml_dir, images) = if voc_layout {
        (dir.join("Annotations"), dir.join("JPEGImages"))
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };
    let sets = dir.join("ImageSets").join("Main");
    let (train, test): (Vec<String>, Vec<String>) =
        if voc_layout && sets.join("train.txt").is_file() {
            let val = sets.join("val.txt");
            let test = if val.is_file() {
                split_names(&val)?
            } else {
                Vec::new()
            };
            (split_names(&sets.join("train.txt"))?, test)
        } else {
            let mut names: Vec<String> = std::fs::read_dir(&xml_dir)
                .map_err(|e| DataError::io(&xml_dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "xml"))
                .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(String::from))
                .collect();
            names.sort();
            (names, Vec::new())
        };
    if train.is_empty() {
        return Err(DataError::Config(format!(
            "{}: no VOC annotation files (*.xml) found",
            xml_dir.display()
        )));
    }
    let mut parsed = Vec::new();
    for name in train.iter().chain(&test) {
        let xml = xml_dir.join(format!("{name}.xml"));
        let text = std::fs::read_to_string(&xml).map_err(|e| DataError::io(&xml, e))?;
        let file = parse_voc_xml(&text, &xml)?;
        let image = image_path(&xml, &file, &images)?;
        parsed.push((xml, image, file));
    }
    let class_file = dir.join("class_names.txt");
    let class_names: Vec<String> = if class_file.is_file() {
        let mut names = split_names(&class_file)?;
        if names.first().is_some_and(|n| n == "_background_") {
            names.remove(0);
        }
        names
    } else {
        let mut found: Vec<String> = parsed
            .iter()
            .flat_map(|(_, _, f)| f.objects.iter().map(|o| o.name.clone()))
            .collect();
        found.sort();
        found.dedup();
        if found
            .iter()
            .all(|n| VOC_DETECTION_CLASSES.contains(&n.as_str()))
        {
            VOC_DETECTION_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            found
        }
    };
    let mut items = Vec::with_capacity(parsed.len());
    for (xml, image, file) in parsed {
        let mut boxes = Vec::with_capacity(file.objects.len());
        for o in &file.objects {
            let label = class_names
                .iter()
                .position(|c| *c == o.name)
                .ok_or_else(|| {
                    DataError::Config(format!(
                        "{}: class `{}` is not among the dataset's classes ({})",
                        xml.display(),
                        o.name,
                        class_names.join(", ")
                    ))
                })?;
            let [x1, y1, x2, y2] = o.bndbox;
            boxes.push(BoxAnnotation {
                xyxy: o.bndbox,
                label: u16::try_from(label)
                    .map_err(|_| DataError::Config("more than 65,535 classes".into()))?,
                crowd: o.difficult,
                area: (x2 - x1) * (y2 - y1),
            });
        }
        items.push((image, boxes));
    }
    let test_items = items.split_off(train.len());
    let (height, width) = DEFAULT_DETECTION_SIZE;
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("voc:{}", dir.display()),
            channels: 3,
            height,
            width,
            num_classes: class_names.len(),
            class_names,
            pixel_max: 255.0,
            // ImageNet's statistics, as mmdet's and torchvision's detection pipelines normalize.
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            anchor_base: None,
        },
        train: Split::all(Arc::new(BoxedFiles::new(items))),
        test: Split::all(Arc::new(BoxedFiles::new(test_items))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELME: &str =
        "/usr/share/doc/labelme-examples/examples/bbox_detection/data_dataset_voc";

    /// Where `.ci/run` extracts the data of the `deepforest` 2.1.0 wheel (PyPI, MIT): NEON
    /// aerial images with tree-crown boxes in VOC XML.
    fn deepforest_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("AUTOKD_DEEPFOREST_DATA").map(PathBuf::from)?;
        dir.is_dir().then_some(dir)
    }

    fn required(what: &str) -> bool {
        if std::env::var_os("AUTOKD_REQUIRE_DATA").is_some() {
            panic!("{what} is missing and AUTOKD_REQUIRE_DATA is set");
        }
        eprintln!("skipping: {what} missing");
        false
    }

    /// All 951 tree-crown boxes of the DeepForest wheel's four annotated images (574, 279, 61
    /// and 37 per file, counted with `grep -c '<object>'`), their classes (Tree; SOAP_061 also
    /// labels Alive and Dead trees), each inside its image, and OSBS_029's first box as written
    /// in its XML. OSBS_029's XML names a `.tif`; the `.png` beside it is read.
    #[test]
    fn deepforest_boxes_are_all_read() {
        let Some(dir) = deepforest_dir() else {
            required("the DeepForest data (AUTOKD_DEEPFOREST_DATA; .ci/run extracts it)");
            return;
        };
        let ds = load(&dir).unwrap();
        assert_eq!(ds.info.class_names, vec!["Alive", "Dead", "Tree"]);
        assert_eq!((ds.train.len(), ds.test.len()), (4, 0));
        let mut counts = Vec::new();
        for i in 0..ds.train.len() {
            let item = ds.train.annotated(i).unwrap();
            let Annotation::Boxes(boxes) = &item.annotation else {
                panic!("not boxes")
            };
            let (w, h) = (item.image.width as f32, item.image.height as f32);
            for b in boxes {
                assert!(b.xyxy[0] >= 0.0 && b.xyxy[2] <= w && b.xyxy[1] >= 0.0 && b.xyxy[3] <= h);
            }
            counts.push(boxes.len());
        }
        assert_eq!(counts, vec![574, 279, 61, 37]);
        assert_eq!(counts.iter().sum::<usize>(), 951);
        let item = ds.train.annotated(2).unwrap();
        assert_eq!((item.image.width, item.image.height), (400, 400));
        let Annotation::Boxes(boxes) = &item.annotation else {
            panic!("not boxes")
        };
        assert_eq!(boxes[0].xyxy, [203.0, 67.0, 227.0, 90.0]);
        assert_eq!((boxes[0].label, boxes[0].area), (2, 24.0 * 23.0));
    }

    /// labelme's VOC export of three PASCAL VOC 2011 photos: classes from `class_names.txt`
    /// without `_background_` (20, labelme's spelling), and the first file's two persons as
    /// written in `Annotations/2011_000003.xml`.
    #[test]
    fn labelme_voc_boxes() {
        let dir = Path::new(LABELME);
        if !dir.is_dir() && !required(LABELME) {
            return;
        }
        let ds = load(dir).unwrap();
        assert_eq!(ds.info.num_classes, 20);
        assert_eq!(ds.info.class_names[0], "aeroplane");
        assert_eq!(ds.train.len(), 3);
        let item = ds.train.annotated(0).unwrap();
        assert_eq!((item.image.width, item.image.height), (500, 338));
        let Annotation::Boxes(boxes) = &item.annotation else {
            panic!("not boxes")
        };
        let person = ds
            .info
            .class_names
            .iter()
            .position(|c| c == "person")
            .unwrap() as u16;
        assert_eq!(boxes.len(), 2);
        // The XML's text, parsed as f32.
        let y: Vec<f32> = ["107.36900369003689", "329.36900369003695"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(boxes[0].xyxy, [191.0, y[0], 313.0, y[1]]);
        assert_eq!(boxes[1].xyxy, [365.0, 83.0, 500.0, 333.0]);
        assert!(boxes.iter().all(|b| b.label == person && !b.crowd));
    }

    #[test]
    fn malformed_files_are_named() {
        let p = Path::new("a.xml");
        let ok = parse_voc_xml(
            "<annotation><filename>a &amp; b.jpg</filename><size><width>10</width>\
             <height>8</height></size><object><name>cat</name><difficult>1</difficult>\
             <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5.5</xmax><ymax>6</ymax></bndbox>\
             </object></annotation>",
            p,
        )
        .unwrap();
        assert_eq!(ok.filename.as_deref(), Some("a & b.jpg"));
        assert_eq!(ok.size, Some((10, 8)));
        assert_eq!(
            ok.objects,
            vec![VocObject {
                name: "cat".into(),
                bndbox: [1.0, 2.0, 5.5, 6.0],
                difficult: true
            }]
        );
        let err = |xml: &str| parse_voc_xml(xml, p).unwrap_err().to_string();
        let e = err(
            "<annotation><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object></annotation>",
        );
        assert!(e.contains("a.xml") && e.contains("lacks"), "{e}");
        let e = err(
            "<annotation><object><name>cat</name><bndbox><xmin>x</xmin></bndbox></object></annotation>",
        );
        assert!(e.contains("expected a number"), "{e}");
        let e = err(
            "<annotation><object><name>cat</name><bndbox><xmin>5</xmin><ymin>0</ymin>\
                     <xmax>5</xmax><ymax>3</ymax></bndbox></object></annotation>",
        );
        assert!(e.contains("empty"), "{e}");
        let e = err("<annotation><object></annotation>");
        assert!(e.contains("XML"), "{e}");
        // A folder without XML files, and an XML without its image.
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no VOC annotation files"), "{e}");
        std::fs::write(
            dir.path().join("x.xml"),
            "<annotation><filename>x.jpg</filename></annotation>",
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("x.xml") && e.contains("no image found"), "{e}");
    }
}
