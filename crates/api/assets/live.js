// Live updates for the pages: one Server-Sent Events stream of the API
// (GET /api/v1/live) with the channels the page names in <body data-live>,
// authenticated by a single-use ticket from POST /live-ticket (the cookie
// session; the page's CSRF token in a header), or as a guest, who follows
// a product's public channel without one. Everything it changes is
// already on the page as the server drew it: without this script the pages
// still work, they just do not move by themselves.
(function () {
  "use strict";
  var channels = document.body.getAttribute("data-live");
  if (!channels) { return; }
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var source = null;
  var retry = 1000;
  // Where to resume: the positions the page was drawn at, then the id of
  // the last event received (the stream's Last-Event-ID, which a new
  // EventSource cannot send as a header).
  var resume = document.body.getAttribute("data-live-from") || "";
  var guest = document.body.getAttribute("data-live-guest") === "true";

  function each(selector, update) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), update);
  }

  function text(element, value) {
    if (element.textContent !== String(value)) { element.textContent = value; }
  }

  function onMessage(data) {
    if (data.type === "order.status") {
      each('[data-live-order="' + data.order_id + '"]', function (el) { text(el, data.status); });
      each('[data-live-history="' + data.order_id + '"]', function (list) {
        // A step the page was drawn with, sent again: shown once.
        var last = list.lastElementChild;
        if (last && last.firstChild && last.firstChild.textContent.trim() === data.status) { return; }
        var item = document.createElement("li");
        item.textContent = data.status;
        list.appendChild(item);
      });
      each("[data-live-feed]", function (feed) {
        var item = document.createElement("li");
        item.textContent = "Order …" + String(data.order_id).slice(-8) + " is " + data.status;
        feed.insertBefore(item, feed.firstChild);
        while (feed.children.length > 20) { feed.removeChild(feed.lastChild); }
      });
    } else if (data.type === "product") {
      each('[data-live-stock="' + data.id + '"]', function (el) { text(el, data.stock); });
    } else if (data.type === "notification") {
      each("[data-live-unread]", function (el) {
        text(el, Number(el.textContent || 0) + 1);
        el.hidden = false;
      });
    } else if (data.type === "health") {
      var lag = 0;
      var groups = data.consumer_lag || {};
      Object.keys(groups).forEach(function (group) {
        lag += Number(groups[group]) || 0;
        each('[data-live-group-lag="' + group + '"]', function (el) { text(el, groups[group]); });
      });
      each("[data-live-lag]", function (el) { text(el, lag); });
      var partitions = data.partition_lag || {};
      Object.keys(partitions).forEach(function (group) {
        Object.keys(partitions[group]).forEach(function (partition) {
          each('[data-live-partition-lag="' + group + " " + partition + '"]', function (el) {
            text(el, partitions[group][partition]);
          });
        });
      });
      each("[data-live-dead]", function (el) { text(el, data.dead_letters); });
    }
  }

  function ticket() {
    if (guest) { return Promise.resolve({ ticket: null }); }
    return fetch("/live-ticket", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 401) { return null; }
        if (!response.ok) { throw new Error("ticket " + response.status); }
        return response.json();
      });
  }

  function connect() {
    ticket()
      .then(function (body) {
        if (!body) { return; }
        var url = "/api/v1/live?channels=" + encodeURIComponent(channels);
        if (body.ticket) { url += "&ticket=" + encodeURIComponent(body.ticket); }
        if (resume) { url += "&last_event_id=" + encodeURIComponent(resume); }
        source = new EventSource(url);
        source.addEventListener("open", function () { retry = 1000; });
        source.addEventListener("message", function (event) {
          if (event.lastEventId) { resume = event.lastEventId; }
          var frame = JSON.parse(event.data);
          if (frame.data) { onMessage(frame.data); }
        });
        source.addEventListener("error", function () {
          // A ticket is good once: a new connection needs a new one.
          source.close();
          setTimeout(connect, retry);
          retry = Math.min(retry * 2, 30000);
        });
      })
      .catch(function () {
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      });
  }

  connect();
})();
