// The rsclip map: a Streamlit (v1) custom component on Leaflet, served by the app itself.
//
// In (args of each "streamlit:render" message, built by rsclip/app/mapdata.py):
//   features  GeoJSON FeatureCollection of tile footprints; properties: id, rank, score, color, uri, window,
//             thumb (data:image/jpeg URI or null), corners ([[lon, lat] x 3]: the thumbnail's top-left,
//             top-right and bottom-left corners), thumb_size ([w, h] px)
//   area      the current search area (GeoJSON geometry) or null
//   extent    [lon_min, lat_min, lon_max, lat_max] to show when there is no feature (the table's), or null
//   legend    {min, max, colors} of the score colours, or null
//   basemap   an XYZ URL template or null (then nothing is fetched: no basemap)
//   selected  the id of the selected tile or null; version: changes when features change (the map refits)
// Out (setComponentValue): {event: "select", id, nonce} | {event: "area", geometry, nonce} | {event: "clear", nonce}
//
// Everything from the table (uris, windows) is shown with textContent, never as HTML.
(function () {
  "use strict";

  const FRAME_EXTRA = 2;
  const THUMB_MIN_PX = 40; // a thumbnail is shown once its footprint is at least this wide on screen
  const CLOSE_PX = 10; // a click this close to a polygon's first vertex closes it
  const DATA_JPEG = "data:image/jpeg;base64,";
  let nonce = 0;
  let state = { version: null, selected: null, areaKey: null, basemap: null, height: 0 };

  function post(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
  }
  function send(value) {
    nonce += 1;
    post("streamlit:setComponentValue", { value: Object.assign({ nonce: Date.now() + ":" + nonce }, value), dataType: "json" });
  }

  const map = L.map("map", { zoomAnimation: false, worldCopyJump: false, attributionControl: false,
                             preferCanvas: false, minZoom: 1, maxZoom: 22 });
  map.setView([0, 0], 2);
  map.createPane("thumbs").style.zIndex = 350; // under the footprint outlines (overlayPane, 400)
  L.control.scale({ imperial: false }).addTo(map);
  const footprints = L.featureGroup().addTo(map);
  const thumbs = L.layerGroup().addTo(map);
  const areaLayer = L.featureGroup().addTo(map);
  let basemapLayer = null;
  let legend = null;
  const byId = new Map();

  // ------------------------------------------------------------------ thumbnails at the tile's corners
  const Thumb = L.Layer.extend({
    initialize: function (url, corners, size, feature) {
      this._url = url; this._corners = corners.map(function (c) { return L.latLng(c[1], c[0]); });
      this._size = size; this._feature = feature;
      // a tile across the antimeridian: keep its corners on one side
      for (let i = 1; i < 3; i++) {
        const d = this._corners[i].lng - this._corners[0].lng;
        if (d > 180) this._corners[i] = L.latLng(this._corners[i].lat, this._corners[i].lng - 360);
        if (d < -180) this._corners[i] = L.latLng(this._corners[i].lat, this._corners[i].lng + 360);
      }
    },
    onAdd: function (m) {
      const img = this._img = L.DomUtil.create("img", "rsclip-thumb");
      img.alt = "";
      img.width = this._size[0]; img.height = this._size[1];
      img.src = this._url;
      img.dataset.tileId = this._feature.properties.id;
      m.getPane("thumbs").appendChild(img);
      m.on("zoomend viewreset", this._reset, this);
      this._reset();
    },
    onRemove: function (m) {
      m.off("zoomend viewreset", this._reset, this);
      L.DomUtil.remove(this._img);
    },
    _reset: function () {
      const m = this._map;
      const p0 = m.latLngToLayerPoint(this._corners[0]);
      const p1 = m.latLngToLayerPoint(this._corners[1]);
      const p2 = m.latLngToLayerPoint(this._corners[2]);
      const w = this._size[0], h = this._size[1];
      const a = (p1.x - p0.x) / w, b = (p1.y - p0.y) / w, c = (p2.x - p0.x) / h, d = (p2.y - p0.y) / h;
      this._img.style.transform = "matrix(" + [a, b, c, d, p0.x, p0.y].join(",") + ")";
      const shown = Math.hypot(p1.x - p0.x, p1.y - p0.y) >= THUMB_MIN_PX;
      this._img.style.display = shown ? "block" : "none";
      const layer = byId.get(this._feature.properties.id);
      if (layer) layer.setStyle({ fillOpacity: shown ? 0 : 0.35 });
    },
  });

  // ------------------------------------------------------------------ features
  function tooltip(p) {
    const el = document.createElement("div");
    el.className = "rsclip-tip";
    el.textContent = "#" + p.rank + "  score " + Number(p.score).toFixed(3) + "\n" + p.uri + "\n" + p.window;
    return el;
  }

  function style(p, selected) {
    return { color: selected ? "#ff1744" : p.color, weight: selected ? 4 : 2, opacity: 1, fillColor: p.color,
             fillOpacity: 0.35 };
  }

  function drawFeatures(collection, selected) {
    footprints.clearLayers(); thumbs.clearLayers(); byId.clear();
    (collection.features || []).forEach(function (feature) {
      const p = feature.properties;
      const layer = L.geoJSON(feature, { style: function () { return style(p, p.id === selected); } });
      layer.eachLayer(function (path) {
        path.bindTooltip(tooltip(p), { sticky: true });
        path.on("click", function () { if (!drawing.mode) send({ event: "select", id: p.id }); });
      });
      footprints.addLayer(layer);
      layer.eachLayer(function (path) {
        const el = path.getElement && path.getElement();
        if (el) { el.setAttribute("data-tile-id", p.id); el.classList.add("rsclip-tile"); }
      });
      byId.set(p.id, layer);
      if (typeof p.thumb === "string" && p.thumb.startsWith(DATA_JPEG) && Array.isArray(p.corners)) {
        thumbs.addLayer(new Thumb(p.thumb, p.corners, p.thumb_size || [96, 96], feature));
      }
    });
  }

  function restyle(selected) {
    byId.forEach(function (layer, id) {
      layer.eachLayer(function (path) { path.setStyle(style(path.feature.properties, id === selected)); });
      if (id === selected) layer.bringToFront();
    });
    thumbs.eachLayer(function (t) { t._reset(); });
  }

  function drawArea(geometry) {
    areaLayer.clearLayers();
    if (geometry) {
      areaLayer.addLayer(L.geoJSON(geometry, { interactive: false,
        style: { color: "#1565c0", weight: 2, dashArray: "6 4", fill: true, fillOpacity: 0.05 } }));
    }
  }

  function fit(extent) {
    let bounds = footprints.getLayers().length ? footprints.getBounds() : null;
    if (!bounds && areaLayer.getLayers().length) bounds = areaLayer.getBounds();
    if (!bounds && extent) bounds = L.latLngBounds([extent[1], extent[0]], [extent[3], extent[2]]);
    if (bounds && bounds.isValid()) map.fitBounds(bounds, { padding: [20, 20], maxZoom: 18 });
  }

  function setBasemap(template) {
    if (template === state.basemap) return;
    if (basemapLayer) { map.removeLayer(basemapLayer); basemapLayer = null; }
    if (typeof template === "string" && /^https?:\/\//.test(template)) {
      basemapLayer = L.tileLayer(template, { maxZoom: 22, crossOrigin: false }).addTo(map);
    }
    state.basemap = template;
  }

  function setLegend(spec) {
    if (legend) { map.removeControl(legend); legend = null; }
    if (!spec) return;
    legend = L.control({ position: "bottomright" });
    legend.onAdd = function () {
      const div = L.DomUtil.create("div", "rsclip-legend");
      const title = document.createElement("div"); title.textContent = "score";
      const ramp = document.createElement("div"); ramp.className = "rsclip-ramp";
      ramp.style.background = "linear-gradient(to right, " + spec.colors.join(", ") + ")";
      const ends = document.createElement("div"); ends.className = "rsclip-ends";
      const lo = document.createElement("span"); lo.textContent = Number(spec.min).toFixed(3);
      const hi = document.createElement("span"); hi.textContent = Number(spec.max).toFixed(3);
      ends.append(lo, hi); div.append(title, ramp, ends);
      return div;
    };
    legend.addTo(map);
  }

  // ------------------------------------------------------------------ drawing the search area
  const drawing = { mode: null, start: null, shape: null, points: [], guide: null };

  function setMode(mode) {
    cancelDrawing();
    drawing.mode = mode;
    map.getContainer().classList.toggle("rsclip-drawing", !!mode);
    if (mode) { map.dragging.disable(); map.doubleClickZoom.disable(); } else { map.dragging.enable(); map.doubleClickZoom.enable(); }
    buttons.rect.classList.toggle("rsclip-active", mode === "rect");
    buttons.poly.classList.toggle("rsclip-active", mode === "poly");
    hint.update(mode === "rect" ? "Drag a rectangle on the map" :
                mode === "poly" ? "Click the corners; click the first one (or double-click) to finish; Esc cancels" : "");
  }

  function cancelDrawing() {
    L.DomUtil.enableTextSelection();
    if (drawing.shape) map.removeLayer(drawing.shape);
    if (drawing.guide) map.removeLayer(drawing.guide);
    drawing.shape = drawing.guide = drawing.start = null;
    drawing.points = [];
  }

  function finish(ring) {
    const coords = ring.map(function (ll) { return [ll.lng, ll.lat]; });
    coords.push(coords[0]);
    setMode(null);
    drawArea({ type: "Polygon", coordinates: [coords] });
    send({ event: "area", geometry: { type: "Polygon", coordinates: [coords] } });
  }

  map.on("mousedown", function (e) {
    if (drawing.mode !== "rect") return;
    L.DomEvent.preventDefault(e.originalEvent); // a drag draws; it does not select the controls' text
    L.DomUtil.disableTextSelection();
    drawing.start = e.latlng;
    drawing.shape = L.rectangle(L.latLngBounds(e.latlng, e.latlng), { color: "#1565c0", weight: 2, dashArray: "6 4", interactive: false }).addTo(map);
  });
  map.on("mousemove", function (e) {
    if (drawing.mode === "rect" && drawing.start) drawing.shape.setBounds(L.latLngBounds(drawing.start, e.latlng));
    if (drawing.mode === "poly" && drawing.points.length) {
      if (drawing.guide) map.removeLayer(drawing.guide);
      drawing.guide = L.polyline([drawing.points[drawing.points.length - 1], e.latlng], { color: "#1565c0", dashArray: "3 3", interactive: false }).addTo(map);
    }
  });
  map.on("mouseup", function (e) {
    if (drawing.mode !== "rect" || !drawing.start) return;
    const b = L.latLngBounds(drawing.start, e.latlng);
    if (b.getWest() === b.getEast() || b.getSouth() === b.getNorth()) { cancelDrawing(); return; }
    finish([b.getSouthWest(), b.getSouthEast(), b.getNorthEast(), b.getNorthWest()]);
  });
  map.on("click", function (e) {
    if (drawing.mode !== "poly") return;
    const pts = drawing.points;
    if (pts.length >= 3 && map.latLngToContainerPoint(pts[0]).distanceTo(e.containerPoint) <= CLOSE_PX) {
      finish(pts.slice());
      return;
    }
    pts.push(e.latlng);
    if (drawing.shape) map.removeLayer(drawing.shape);
    drawing.shape = L.polyline(pts, { color: "#1565c0", weight: 2, interactive: false }).addTo(map);
  });
  map.on("dblclick", function () {
    if (drawing.mode === "poly" && drawing.points.length >= 3) finish(dedupe(drawing.points));
  });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape" && drawing.mode) setMode(null); });

  function dedupe(points) { // a double-click also clicked twice: drop repeated vertices
    return points.filter(function (p, i) { return i === 0 || !p.equals(points[i - 1]); });
  }

  const buttons = {};
  const Tools = L.Control.extend({
    options: { position: "topleft" },
    onAdd: function () {
      const bar = L.DomUtil.create("div", "leaflet-bar rsclip-tools");
      [["rect", "\u25ad", "Draw a rectangle"], ["poly", "\u2b20", "Draw a polygon"], ["clear", "\u2715", "Clear the area"]]
        .forEach(function (spec) {
          const a = L.DomUtil.create("a", "", bar);
          a.textContent = spec[1]; a.title = spec[2]; a.setAttribute("role", "button"); a.setAttribute("aria-label", spec[2]);
          a.href = "#";
          L.DomEvent.disableClickPropagation(a);
          L.DomEvent.on(a, "click", function (ev) {
            L.DomEvent.preventDefault(ev);
            if (spec[0] === "clear") { setMode(null); drawArea(null); send({ event: "clear" }); }
            else setMode(drawing.mode === spec[0] ? null : spec[0]);
          });
          buttons[spec[0]] = a;
        });
      return bar;
    },
  });
  new Tools().addTo(map);
  const hint = L.control({ position: "topright" });
  hint.onAdd = function () { this._div = L.DomUtil.create("div", "rsclip-hint"); this._div.style.display = "none"; return this._div; };
  hint.update = function (text) { this._div.textContent = text; this._div.style.display = text ? "block" : "none"; };
  hint.addTo(map);

  // ------------------------------------------------------------------ Streamlit's render messages
  function render(args) {
    const height = Number(args.height) || 480;
    if (height !== state.height) {
      document.getElementById("map").style.height = height + "px";
      post("streamlit:setFrameHeight", { height: height + FRAME_EXTRA });
      state.height = height;
      map.invalidateSize();
    }
    setBasemap(args.basemap || null);
    const areaKey = JSON.stringify(args.area || null);
    if (areaKey !== state.areaKey) { drawArea(args.area || null); state.areaKey = areaKey; }
    if (args.version !== state.version) {
      drawFeatures(args.features || { features: [] }, args.selected || null);
      setLegend(args.legend || null);
      fit(args.extent || null);
      state.version = args.version;
      state.selected = args.selected || null;
    } else if ((args.selected || null) !== state.selected) {
      state.selected = args.selected || null;
      restyle(state.selected);
    }
  }

  window.addEventListener("message", function (event) {
    const data = event.data;
    if (event.source !== window.parent || !data || data.type !== "streamlit:render") return;
    render(data.args || {});
  });
  // for the browser tests: the map and its layers
  window.rsclipMap = { map: map, footprints: footprints, thumbs: thumbs, area: areaLayer, byId: byId,
                       basemap: function () { return basemapLayer; } };
  post("streamlit:componentReady", { apiVersion: 1 });
}());
