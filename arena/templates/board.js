"use strict";
const tabs = Array.from(document.querySelectorAll("#tabs button"));
function show(tab) {
  tabs.forEach(b => b.classList.toggle("active", b.dataset.tab === tab));
  document.querySelectorAll("section.threat").forEach(s => { s.hidden = s.dataset.tab !== tab; });
}
tabs.forEach(b => b.addEventListener("click", () => show(b.dataset.tab)));
function value(group, index, numeric) {  /* an entry is a <tbody>: its row, then its folded flags */
  const cell = group.rows[0].cells[index];
  if (!numeric) return cell.textContent.trim().toLowerCase();
  return cell.dataset.value === "" ? null : Number(cell.dataset.value);
}
function sortBy(th) {
  const table = th.closest("table");
  const index = Array.from(th.parentNode.children).indexOf(th);
  const numeric = th.dataset.type === "num";
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const groups = Array.from(table.tBodies);
  groups.sort((a, b) => {
    const x = value(a, index, numeric), y = value(b, index, numeric);
    if (x === null || y === null) return (x === null) - (y === null);  /* no number: always last */
    const order = numeric ? x - y : x.localeCompare(y);
    return ascending ? order : -order;
  });
  groups.forEach(g => table.appendChild(g));
}
document.querySelectorAll("table.board th").forEach(th => th.addEventListener("click", () => sortBy(th)));
const filter = document.getElementById("filter");
function applyFilter() {
  const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  document.querySelectorAll("section.threat").forEach(section => {
    let shown = 0;
    section.querySelectorAll("tbody").forEach(group => {
      const hidden = !words.every(w => group.textContent.toLowerCase().includes(w));
      Array.from(group.rows).forEach(row => { row.hidden = hidden; });
      shown += hidden ? 0 : 1;
    });
    section.querySelector(".empty").hidden = shown > 0;
  });
}
filter.addEventListener("input", applyFilter);
const start = location.hash.slice(1);  /* index.html#1 opens the second threat model */
show(tabs.some(b => b.dataset.tab === start) ? start : "0");
