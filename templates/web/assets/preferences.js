// The preferences page: when the reader has saved no time zone, pre-select the
// browser's own, so the issue arrives at their local morning once they save.
// The page works without this script (the select then shows the editors' zone);
// it is served from our own origin, as the Content-Security-Policy requires.
(function () {
  "use strict";
  var select = document.getElementById("time_zone");
  if (!select || select.getAttribute("data-saved") === "yes") {
    return;
  }
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    return;
  }
  var aliases = {};
  try {
    aliases = JSON.parse(select.getAttribute("data-aliases") || "{}");
  } catch (e) {
    aliases = {};
  }
  // Browsers may give an older name for a zone (Asia/Calcutta for Asia/Kolkata).
  if (Object.prototype.hasOwnProperty.call(aliases, zone)) {
    zone = aliases[zone];
  }
  for (var i = 0; i < select.options.length; i++) {
    if (select.options[i].value === zone) {
      if (select.selectedIndex !== i) {
        select.selectedIndex = i;
        var note = document.getElementById("time_zone_note");
        if (note) {
          note.hidden = false;
        }
      }
      return;
    }
  }
})();
